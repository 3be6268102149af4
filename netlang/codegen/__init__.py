"""Code generation: a planned graph rendered as Python source for Numba (cpu) or numba.cuda (cuda).

Only source text and launch metadata come out of here; netlang.runtime compiles it.  Nothing
here imports numba, so rendering kernels works, and is tested, without it.
"""
