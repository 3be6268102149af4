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
from conftest import from_python

import netlang.ops
from netlang.ops import conv_loops, dense_loops, norm_loops, pool_loops, recurrent_loops
from netlang.runtime import cnn, cpu, random_bits, rbm, recurrent

LOOP_MODULES = [module.name for module in pkgutil.iter_modules(netlang.ops.__path__)
                if module.name.endswith("_loops")]


def _compiled_functions():
    """{code object: compiled dispatcher} over the runtime modules that compile loop nests
    (a plain function that compiled code replaces, `stands_for`, with what replaces it)."""
    found = {}
    for module in (cnn, random_bits, rbm, recurrent):
        for value in vars(module).values():
            if hasattr(value, "py_func"):
                found[value.py_func.__code__] = value
            elif hasattr(value, "stands_for"):
                found[value.stands_for.__code__] = value
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
    sources = {Path(code.co_filename).name for code in _compiled_functions()}
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
    from_python(cnn.im2col)(x, columns[0], *lines, *geometry)
    conv_loops.im2col(x, columns[1], *lines, *geometry)
    np.testing.assert_array_equal(columns[0], columns[1])
    grads = [np.zeros_like(x) for _ in range(2)]
    from_python(cnn.col2im)(columns[0], grads[0], *lines, *geometry)
    conv_loops.col2im(columns[0], grads[1], *lines, *geometry)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_pooling_norm_and_bias_loops_compiled_as_written():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 3))
    pool = (2, 5, 6, 3, 3, 3, 2, 2, 2, 2)   # N, H, W, C, Ho, Wo, kh, kw, sh, sw
    outs = [np.zeros((2, 3, 3, 3)) for _ in range(2)]
    from_python(cnn.maxpool_forward)(x, outs[0], *pool, 1, 1)
    pool_loops.maxpool_forward(x, outs[1], *pool, 1, 1)
    np.testing.assert_array_equal(outs[0], outs[1])
    from_python(cnn.avgpool_forward)(x, outs[0], *pool, 1, 1, 1, 1, False)
    pool_loops.avgpool_forward(x, outs[1], *pool, 1, 1, 1, 1, False)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12)

    weight = rng.standard_normal(3)
    coefficients = [np.zeros((3, 3)) for _ in range(2)]
    for batchnorm_coefficients, coefficient in zip(
            (from_python(cnn.batchnorm_coefficients), norm_loops.batchnorm_coefficients), coefficients):
        batchnorm_coefficients(x, weight, np.zeros(3), np.ones(3), np.zeros((4, 3)),
                               coefficient, 1e-5, 0.1, True, True)
    np.testing.assert_allclose(coefficients[0], coefficients[1], rtol=1e-12)

    sums = [np.zeros(3) for _ in range(2)]
    from_python(cnn.column_sums)(x, sums[0])
    dense_loops.column_sums(x, sums[1])
    np.testing.assert_allclose(sums[0], sums[1], rtol=1e-12)


@pytest.mark.parametrize("rows, channels", [(7, 1), (130, 6), (3, 255), (9, 256), (5, 300),
                                            (4, dense_loops.LANES), (3, dense_loops.LANES + 5),
                                            (2, 2 * dense_loops.LANES + 1)])
def test_column_sums_compiled_as_written_at_every_width(rows, channels):
    """Runs of several rows (few channels), one row per run, and channels past the stack
    lanes' count, summed in blocks: the compiled sums are the plain function's, bit for bit,
    and the float64 totals of the rows."""
    g = np.random.default_rng(channels).standard_normal((rows, channels)).astype(np.float32)
    compiled, plain = np.empty(channels, np.float32), np.empty(channels, np.float32)
    from_python(cnn.column_sums)(g, compiled)
    dense_loops.column_sums(g, plain)
    np.testing.assert_array_equal(compiled, plain)
    np.testing.assert_allclose(compiled, g.astype(np.float64).sum(axis=0), rtol=1e-6,
                               atol=1e-6)


def test_dropout_mask_compiled_as_written():
    masks = [np.zeros(257, np.float32) for _ in range(2)]
    key, threshold, scale = np.uint64(12345), np.uint64(2 ** 31), np.float32(2.0)
    from_python(random_bits.fill_dropout_mask)(masks[0], key, threshold, scale)
    with np.errstate(over="ignore"):   # the hash wraps around on purpose
        norm_loops.fill_dropout_mask(masks[1], key, threshold, scale)
    np.testing.assert_array_equal(masks[0], masks[1])


def test_float32_tanh_is_within_two_and_a_half_ulps():
    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, 1e-30, -1e-6, 3e-4, 9.0, 30.0],
                        np.geomspace(1e-30, 10.0, 20_001), -np.geomspace(1e-30, 10.0, 20_001)])
    x = x.astype(np.float32)
    plain = np.array([recurrent_loops.float32_tanh(v) for v in x[::37]], np.float32)
    compiled = np.array([recurrent._float32_tanh(v) for v in x], np.float32)
    np.testing.assert_array_equal(compiled[::37], plain)
    exact = np.tanh(x.astype(np.float64))
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert (np.abs(compiled - exact) <= 2.5 * np.maximum(spacing, 1e-45)).all()


GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent_step_arrays(dtype, kind, rng):
    B, T, H = 3, 4, 5
    G = GATES[kind]
    arrays = {"proj": rng.normal(size=(B, T, G * H)), "hw": rng.normal(size=(B, G * H)),
              "bias_ih": rng.normal(size=G * H), "bias_hh": rng.normal(size=G * H),
              "h": rng.normal(size=(B, H)), "c": rng.normal(size=(B, H)),
              "prev": np.zeros((B, T, H)), "gates": np.zeros((B, T, G * H)),
              "cells": np.zeros((B, T, H)), "tanhc": np.zeros((B, T, H)),
              "hn": np.zeros((B, T, H)), "out": np.zeros((B, T, 2 * H)),
              "dh": rng.normal(size=(B, H)), "dc": rng.normal(size=(B, H)),
              "d_ih": np.zeros((B, T, G * H)), "d_hh": np.zeros((B, T, G * H))}
    return {name: value.astype(dtype) for name, value in arrays.items()}


STEP_ARGUMENTS = {
    "rnn": (["h", "prev", "gates", "out"], ["dh", "out", "gates", "d_ih"]),
    "lstm": (["h", "c", "prev", "gates", "cells", "tanhc", "out"],
             ["dh", "dc", "out", "gates", "cells", "tanhc", "d_ih"]),
    "gru": (["h", "prev", "gates", "hn", "out"], ["dh", "out", "prev", "gates", "hn", "d_ih",
                                                  "d_hh"]),
}


# float64's compilations are slow (2-4 s each): the default run checks each kind in float32.
@pytest.mark.parametrize("dtype", [pytest.param(np.float64, marks=pytest.mark.slow), np.float32])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_steps_compiled_as_written(kind, dtype):
    """One step forward and one back, on a batch whose second example is past its length:
    the float64 functions compute what the plain Python computes; the float32 ones, with
    their own tanh, within float32 rounding of it."""
    suffix = "32" if dtype == np.float32 else "64"
    forward_names, back_names = STEP_ARGUMENTS[kind]
    results = []
    for step, back in ((getattr(recurrent, f"{kind}_step{suffix}"),
                        getattr(recurrent, f"{kind}_step_back{suffix}")),
                       (getattr(recurrent_loops, f"{kind}_step"),
                        getattr(recurrent_loops, f"{kind}_step_back"))):
        arrays = _recurrent_step_arrays(dtype, kind, np.random.default_rng(2))
        steps = np.array([4, 1, 3])
        extra = (False,) if kind == "rnn" else ()
        units = arrays["hw"].shape[1] // GATES[kind]   # the step functions take H as an argument
        # The step's gate values hold the products on entry: both added, or the GRU's apart.
        apart = kind == "gru"
        arrays["gates"][:, 2] = arrays["proj"][:, 2] + (0 if apart else arrays["hw"])
        step(2, steps, *([arrays["hw"]] if apart else []), arrays["bias_ih"], arrays["bias_hh"],
             *(arrays[name] for name in forward_names), 5, True, *extra, units)
        front = back_names[:1 + (kind == "lstm")]
        back(2, steps, *(arrays[name] for name in front), arrays["out"], 0, True,
             *(arrays[name] for name in back_names[len(front) + 1:]), *extra, units)
        results.append(arrays)
    tolerance = {"rtol": 1e-12} if dtype == np.float64 else {"rtol": 2e-6, "atol": 2e-6}
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], err_msg=name, **tolerance)
    assert not results[0]["gates"][1, 2].any() and not results[0]["d_ih"][1, 2].any()
