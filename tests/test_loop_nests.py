"""The kernels' loop nests: written as plain Python beside their ops, compiled in runtime/.

Generated CPU programs call the compiled forms by name (netlang.runtime.cnn,
netlang.runtime.random_bits); these tests hold that every loop nest written in
netlang/ops/*_loops.py is compiled there, that the compiled form computes what the plain
Python computes, and that the kernel cache's key reads every file they come from.
"""

import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import netlang.ops
from netlang.ops import conv_loops, dense_loops, norm_loops, pool_loops
from netlang.runtime import cnn, cpu, random_bits

LOOP_MODULES = [module.name for module in pkgutil.iter_modules(netlang.ops.__path__)
                if module.name.endswith("_loops")]


def _compiled_functions():
    """{code object: compiled dispatcher} over the runtime modules that compile loop nests."""
    found = {}
    for module in (cnn, random_bits):
        for value in vars(module).values():
            if hasattr(value, "py_func"):
                found[value.py_func.__code__] = value
    return found


def test_every_loop_nest_is_compiled():
    compiled = _compiled_functions()
    assert LOOP_MODULES, "no netlang/ops/*_loops.py found"
    for name in LOOP_MODULES:
        module = importlib.import_module(f"netlang.ops.{name}")
        for function_name, function in vars(module).items():
            if inspect.isfunction(function) and function.__module__ == module.__name__:
                assert function.__code__ in compiled, \
                    f"netlang.ops.{name}.{function_name} is never compiled in netlang/runtime/"


def test_kernel_cache_key_reads_every_loop_nest_source():
    """A change to a loop nest must change the key of every cached program calling it (their
    machine code holds the loop nest's)."""
    sources = {Path(dispatcher.py_func.__code__.co_filename).name
               for dispatcher in _compiled_functions().values()}
    digest_code = inspect.getsource(cpu._helpers_version)
    missing = [name for name in sorted(sources) if f'"{name}"' not in digest_code
               and f'/{name}"' not in digest_code]
    assert not missing, f"runtime/cpu.py's _helpers_version does not read {missing}"


CONVOLUTIONS = [
    # H, W, C, kh, kw, stride, dilation, (pad top, pad left), groups
    (5, 6, 3, 3, 3, 1, 1, (1, 1), 1),
    (7, 5, 4, 3, 2, 2, 1, (0, 1), 2),
    (6, 6, 2, 2, 3, 1, 2, (2, 0), 1),
]


@pytest.mark.parametrize("H, W, C, kh, kw, s, d, pads, groups", CONVOLUTIONS)
def test_im2col_and_col2im_compiled_as_written(H, W, C, kh, kw, s, d, pads, groups):
    rng = np.random.default_rng(0)
    N, (pt, pl) = 2, pads
    Ho = (H + 2 * pt - d * (kh - 1) - 1) // s + 1
    Wo = (W + 2 * pl - d * (kw - 1) - 1) // s + 1
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    geometry = (H, W, C, Ho, Wo, kh, kw, s, s, d, d, pt, pl, groups)
    lines = (1, N * Ho)   # not from the first line: a block's offsets
    columns = [np.full(((lines[1] - lines[0]) * Wo, kh * kw * C), np.nan, np.float32)
               for _ in range(2)]
    cnn.im2col(x, columns[0], *lines, *geometry)
    conv_loops.im2col(x, columns[1], *lines, *geometry)
    np.testing.assert_array_equal(columns[0], columns[1])
    grads = [np.zeros_like(x) for _ in range(2)]
    cnn.col2im(columns[0], grads[0], *lines, *geometry)
    conv_loops.col2im(columns[0], grads[1], *lines, *geometry)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_pooling_norm_and_bias_loops_compiled_as_written():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 3))
    pool = (2, 5, 6, 3, 3, 3, 2, 2, 2, 2)   # N, H, W, C, Ho, Wo, kh, kw, sh, sw
    outs = [np.zeros((2, 3, 3, 3)) for _ in range(2)]
    cnn.maxpool_forward(x, outs[0], *pool, 1, 1)
    pool_loops.maxpool_forward(x, outs[1], *pool, 1, 1)
    np.testing.assert_array_equal(outs[0], outs[1])
    cnn.avgpool_forward(x, outs[0], *pool, 1, 1, 1, 1, False)
    pool_loops.avgpool_forward(x, outs[1], *pool, 1, 1, 1, 1, False)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12)

    weight = rng.standard_normal(3)
    coefficients = [np.zeros((3, 3)) for _ in range(2)]
    for batchnorm_coefficients, coefficient in zip(
            (cnn.batchnorm_coefficients, norm_loops.batchnorm_coefficients), coefficients):
        batchnorm_coefficients(x, weight, np.zeros(3), np.ones(3), np.zeros((4, 3)),
                               coefficient, 1e-5, 0.1, True, True)
    np.testing.assert_allclose(coefficients[0], coefficients[1], rtol=1e-12)

    sums = [np.zeros(3) for _ in range(2)]
    cnn.column_sums(x, sums[0])
    dense_loops.column_sums(x, sums[1])
    np.testing.assert_allclose(sums[0], sums[1], rtol=1e-12)


def test_dropout_mask_compiled_as_written():
    masks = [np.zeros(257, np.float32) for _ in range(2)]
    key, threshold, scale = np.uint64(12345), np.uint64(2 ** 31), np.float32(2.0)
    random_bits.fill_dropout_mask(masks[0], key, threshold, scale)
    with np.errstate(over="ignore"):   # the hash wraps around on purpose
        norm_loops.fill_dropout_mask(masks[1], key, threshold, scale)
    np.testing.assert_array_equal(masks[0], masks[1])
