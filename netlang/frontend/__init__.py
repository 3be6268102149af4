"""The front end: `.net` text → typed AST.  Imports Lark, never Numba."""
