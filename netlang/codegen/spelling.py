"""Each renderer's spelling of scalar code: constants and the math functions templates call.

The op templates (`cpu_expr`, `cpu_kernel`, `cuda_kernel`) and the optimiser's update and
penalty templates are shared by the CPU and CUDA renderers.  Where they need a constant or a
math function they ask the table they are handed, never write one target's text: `c(0.5)`,
`c.exp(x)` in an expression or an optimiser template, `k.const(0.5)`, `k.math.sqrt(x)` in a
kernel template.  The CPU renderer hands them `CpuSpelling` (NumPy's functions), the CUDA
renderer `CudaSpelling` (the `math` module's, as numba.cuda device code calls them), so no
renderer's text is ever rewritten into another's.  A new function is a method on both, and
where a spelling names something the generated module does not define (NumPy has no erf, so
the CPU's erf is Python's `math.erf`, which Numba compiles), its import joins the table's
`imports`, which the renderer writes at the top of every module it generates.
"""

from __future__ import annotations

import math
import re

# A variable or an element of one (`f3[i]`): an operand that needs no parentheses.
_ELEMENT = re.compile(r"[A-Za-z_]\w*(\[[\w, ]*\])?")


class CpuSpelling:
    """The CPU renderer's table: called, a constant of the program's float type (`c(0.5)`
    is `F(0.5)`); its methods, NumPy's functions of a scalar expression (`c.exp("x")` is
    `np.exp(x)`), or Python's `math` function where NumPy has none (`erf`)."""

    inf = "np.inf"
    # What the spellings below call besides NumPy (which every generated module imports).
    imports = ("from math import erf",)

    def __call__(self, value) -> str:
        """`value` as a constant of the generated module's float type `F`: `F(0.5)`; an int as a
        float literal, `F(2.0)`; an infinity through `inf` (its repr, `inf`, names nothing in the
        module); a bool stays `True` or `False`."""
        if isinstance(value, bool):
            return "True" if value else "False"
        if isinstance(value, int):
            return f"F({value}.0)"
        if math.isinf(value):
            return f"F({self.inf})" if value > 0 else f"F(-{self.inf})"
        return f"F({value!r})"

    def exp(self, x: str) -> str:
        """eˣ of the scalar expression `x`."""
        return f"np.exp({x})"

    def expm1(self, x: str) -> str:
        """eˣ − 1, accurate for small `x`, where exp(x) − 1 cancels."""
        return f"np.expm1({x})"

    def log(self, x: str) -> str:
        """The natural logarithm of `x`."""
        return f"np.log({x})"

    def log1p(self, x: str) -> str:
        """log(1 + x), accurate for small `x`."""
        return f"np.log1p({x})"

    def tanh(self, x: str) -> str:
        """The hyperbolic tangent of `x`."""
        return f"np.tanh({x})"

    def sqrt(self, x: str) -> str:
        """The square root of `x`."""
        return f"np.sqrt({x})"

    def cos(self, x: str) -> str:
        """The cosine of `x` (radians)."""
        return f"np.cos({x})"

    def sin(self, x: str) -> str:
        """The sine of `x` (radians)."""
        return f"np.sin({x})"

    def sign(self, x: str) -> str:
        """-1, 0 or 1 as `x` is negative, zero or positive."""
        return f"np.sign({x})"

    def erf(self, x: str) -> str:
        """The error function (NumPy has none: `math.erf`, imported as `erf`)."""
        return f"erf({x})"

    def divide(self, x: str, y: str) -> str:
        """x / y as NumPy divides (a zero `y` gives inf or NaN).  Numba's `/` checks every
        divisor for zero to raise Python's error, and that check keeps a loop from
        vectorising: the optimisers' updates divide through this."""
        return f"np.divide({x}, {y})"


class CudaSpelling(CpuSpelling):
    """The CUDA renderer's table: constants as on the CPU, math functions as numba.cuda
    device code calls them."""

    inf = "math.inf"
    imports = ("import math",)

    def exp(self, x: str) -> str:
        """eˣ, through `math` as numba.cuda device code calls it."""
        return f"math.exp({x})"

    def expm1(self, x: str) -> str:
        """eˣ − 1, accurate for small `x`, through `math`."""
        return f"math.expm1({x})"

    def log(self, x: str) -> str:
        """The natural logarithm of `x`, through `math`."""
        return f"math.log({x})"

    def log1p(self, x: str) -> str:
        """log(1 + x), accurate for small `x`, through `math`."""
        return f"math.log1p({x})"

    def tanh(self, x: str) -> str:
        """The hyperbolic tangent of `x`, through `math`."""
        return f"math.tanh({x})"

    def sqrt(self, x: str) -> str:
        """The square root of `x`, through `math`."""
        return f"math.sqrt({x})"

    def erf(self, x: str) -> str:
        """The error function: `math.erf`, which the table's `import math` already covers."""
        return f"math.erf({x})"

    def cos(self, x: str) -> str:
        """The cosine of `x` (radians), through `math`."""
        return f"math.cos({x})"

    def sin(self, x: str) -> str:
        """The sine of `x` (radians), through `math`."""
        return f"math.sin({x})"

    def divide(self, x: str, y: str) -> str:
        """x / y: numba.cuda compiles kernels with NumPy's error model, so `/` checks nothing."""
        return f"({x}) / ({y})"

    def sign(self, x: str) -> str:
        """Written inline: compile_ptx types a kernel without a GPU only if it calls no device
        function.  `x` appears twice, so an expression is parenthesised."""
        if not _ELEMENT.fullmatch(x):
            x = f"({x})"
        return f"(1.0 if {x} > 0 else (-1.0 if {x} < 0 else 0.0))"
