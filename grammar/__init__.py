"""Installed as the data package `netlang.grammar`, so the grammar ships inside the wheel."""
