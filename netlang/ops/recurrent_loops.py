"""Loop nests of the recurrent layers' CPU kernels, as plain Python: compiled by
netlang.runtime.recurrent.

The templates (netlang/ops/recurrent_kernels.py) emit, for each layer and direction, the loop
over time: per step one product x·W_ihᵀ written straight into the record's gate values, one
product h·W_hhᵀ added to them in place (the GRU's goes apart: its n gate reads it alone), and
one call of a `*_step` below, which adds the biases, applies the gate nonlinearities in place and writes the new
state, the rest of the record (netlang/ops/recurrent_reference.py `record_layout`) and the
output, all in one pass over the step's values.  Back through time, per step, one
`*_step_back` writes the gradients of the gate pre-activations (the tape) and leaves in `dh`
what does not pass through W_hh, and one product with W_hh adds the rest.  Nothing is
allocated: states, gradients and products live in the kernel's workspaces and in the record
and tape.

Arrays are C-contiguous views made once by the generated code: a sequence section (B, T, X),
a state (B, H), a bias (G·H,).  `steps` holds each example's length (T without `lengths`): a
step at or past it is padding, which keeps the state, outputs zeros, records zeros and
passes gradients through unchanged, as in the reference.  Each step's innermost loop runs
over one example's H contiguous units, on one-dimensional views of each gate's block, so
that it vectorises.

The nonlinearities are `tanh` and `sigmoid` below (the reference's formulas): NumPy's tanh,
which is what the plain Python runs and what the float64 kernels compile.  The float32
kernels bind `tanh` to `float32_tanh`, which vectorises (see there).
"""

import functools
import math

import numpy as np

from netlang.errors import DataError

# float32_tanh's constants, all float32: ln 2 split in two (LN2_HI has 16 significant bits, so
# n·LN2_HI is exact for the n it meets), 1/ln 2, expm1's Taylor coefficients 1/k! for k = 2..7,
# and the value past which tanh is ±1 in float32.
_F32 = np.float32
_LN2_HI = _F32(0.693145751953125)
_LN2_LO = _F32(math.log(2.0) - 0.693145751953125)
_INV_LN2 = _F32(1.0 / math.log(2.0))
_C2, _C3, _C4, _C5, _C6, _C7 = (_F32(1.0 / math.factorial(k)) for k in range(2, 8))
_TANH_LIMIT = _F32(9.0)


def float32_tanh(v):
    """tanh(v) for float32 programs, in float32 arithmetic alone, which vectorises 16 values to
    an instruction: Numba's tanh is a call into the C library per element (15-25 ns here), and
    an earlier version in float64 (correctly rounded) took twice as long (0.93 ns against 0.45
    a value, this project's machine).  Within 2.5 ulps of the exact value (NumPy's own float32
    tanh is within 1.4).  With y = −2|v| (clamped to −18, where tanh is ±1 in float32):
    y = n·ln 2 + r, |r| ≤ ln 2 / 2, so e^y − 1 = 2^n·expm1(r) + (2^n − 1), expm1(r) from its
    Taylor series (seven terms leave 5e-9); 2^n is exact (`power_of_two`); then
    tanh|v| = (1 − e^y) / (1 + e^y) = −(e^y − 1) / (2 + (e^y − 1)), which never subtracts two
    near values."""
    a = abs(_F32(v))
    a = a if a < _TANH_LIMIT else _TANH_LIMIT
    y = _F32(-2.0) * a
    m = np.int32(_F32(0.5) - y * _INV_LN2)   # the integer nearest −y / ln 2 (≥ 0: truncates)
    n = -_F32(m)
    r = (y - n * _LN2_HI) - n * _LN2_LO
    em1_r = r * (_F32(1.0) + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    scale = power_of_two(-m)   # 2^n, 0 ≤ m ≤ 26
    em1 = scale * em1_r + (scale - _F32(1.0))
    t = -em1 / (_F32(2.0) + em1)
    return t if v >= 0 else -t


# 2^n in float32, exactly (−126 ≤ n ≤ 127): NumPy's ldexp here; the compiled kernels write its
# bits, an exponent field, instead (netlang/runtime/recurrent.py `_power_of_two`).
# `float32_tanh` took 0.40 ns a value with 2^n a product of five powers of two picked by n's
# bits, 0.31 with the bits.
power_of_two = functools.partial(np.ldexp, _F32(1.0))


def tanh(v):
    """The hyperbolic tangent (the float32 kernels compile `float32_tanh` in its place)."""
    return np.tanh(v)


def sigmoid(v, half, one):
    """1 / (1 + e^−v), as the reference writes it (no overflow); `half` and `one` in v's
    precision, so a float32 value is never widened."""
    return half * (one + tanh(half * v))


def fill_steps(steps, lengths, T):
    """steps (B,) ← each example's length, checked to lie in 0..T."""
    for b in range(steps.size):
        n = lengths[b]
        if n < 0 or n > T:
            raise DataError("`lengths` holds a value outside 0 to the number of steps")
        steps[b] = n


def start_state(state, initial, k):
    """state (B, H) ← the initial states' k-th (B, L·D, H), or zeros when `k` < 0."""
    for b in range(state.shape[0]):
        for j in range(state.shape[1]):
            state[b, j] = initial[b, k, j] if k >= 0 else 0.0


def store_state(state, target, k):
    """target[:, k] ← state (B, H): a final state, or an initial state's gradient, into a
    (B, K, H) section."""
    for b in range(state.shape[0]):
        for j in range(state.shape[1]):
            target[b, k, j] = state[b, j]


def apply_mask(values, mask, layer):
    """values (B, T, W) ×= mask[:, layer] (B, L − 1, T, W): dropout between stacked layers."""
    for b in range(values.shape[0]):
        for t in range(values.shape[1]):
            row, m = values[b, t], mask[b, layer, t]
            for j in range(row.size):
                row[j] *= m[j]


def transpose(source, target, k):
    """target[k] ← sourceᵀ: a layer's W_hh (G·H, H) as (H, G·H) (and W_ih likewise), which the
    forward pass's products read row by row (see netlang/ops/recurrent_kernels.py).  In tiles
    of 16 × 16: row by row, every write went to another cache line (a row of the target is
    2 KB for an LSTM of 128 units), and W_hh took 277 µs instead of 39."""
    rows, columns = source.shape
    for i0 in range(0, rows, 16):
        for j0 in range(0, columns, 16):
            for j in range(j0, min(j0 + 16, columns)):
                for i in range(i0, min(i0 + 16, rows)):
                    target[k, j, i] = source[i, j]


def copy_flat(source, offset, target):
    """target ← source's flat elements from `offset` on (a section of a record)."""
    flat_source = source.reshape(source.size)
    flat_target = target.reshape(target.size)
    for i in range(flat_target.size):
        flat_target[i] = flat_source[offset + i]


# ---- one step forward -----------------------------------------------------------------------
#
# Common arguments: t, the step; steps (B,); the biases; h (B, H) (and the LSTM's c): the state,
# updated in place; prev, gates (and CELL_EXTRAS): the cell's record sections (B, T, ·), where
# gates[:, t] holds the step's x·W_ihᵀ + h·W_hhᵀ on entry (the GRU's x·W_ihᵀ alone, with hw
# (B, G·H), the step's h·W_hhᵀ, apart) and its gate values on return; out (B, T, W): where the
# output goes, at columns col..col + H, when `emit` (the top layer of a layer returning its
# final states emits none); H, the units.  Reading and writing the gate values in place
# instead of a separate (B, T, G·H) product made the row LSTM's forward pass 0.9 ms (a fifth)
# shorter: half the memory it streams.
#
# H is an argument (the templates write the number) rather than read from an array's shape:
# read inside, it kept the step's loops from vectorising as they do with it given, and the
# LSTM's step took 1.7 times as long (28 steps of 128 examples × 128 units in float32, 5.6 ms
# against 3.4, this project's two-core machine).


def rnn_step(t, steps, bias_ih, bias_hh, h, prev, gates, out, col, emit, relu, H):
    """One step of an Elman layer: h' = act(x·W_ihᵀ + h·W_hhᵀ + b_ih + b_hh)."""
    zero = h.dtype.type(0.0)
    for b in range(h.shape[0]):
        hb, pv, gv = h[b], prev[b, t], gates[b, t]
        for j in range(H):
            pv[j] = hb[j]
        if t < steps[b]:
            for j in range(H):
                pre = gv[j] + bias_ih[j] + bias_hh[j]
                gv[j] = (pre if pre > zero else zero) if relu else tanh(pre)
            for j in range(H):
                hb[j] = gv[j]
        else:
            gv[:] = 0.0
        emit_output(out, b, t, col, hb, emit, t < steps[b])


def emit_output(out, b, t, col, state, emit, kept):
    """out[b, t, col:col + H] ← the new state, or zeros at a padded step (when `emit`)."""
    if emit:
        o = out[b, t, col:col + state.size]
        for j in range(state.size):
            o[j] = state[j] if kept else 0.0


def lstm_step(t, steps, bias_ih, bias_hh, h, c, prev, gates, cells, tanhc, out, col, emit, H):
    """One step of an LSTM: (i, f, g, o) = (σ, σ, tanh, σ)(x·W_ihᵀ + h·W_hhᵀ + b_ih + b_hh),
    c' = f·c + i·g, h' = o·tanh(c').  A loop per part: one that reads or writes a dozen
    arrays does not vectorise (LLVM gives up on checking that they do not overlap)."""
    half, one = h.dtype.type(0.5), h.dtype.type(1.0)
    for b in range(h.shape[0]):
        hb, cb = h[b], c[b]
        pv, cv, tv, gv = prev[b, t], cells[b, t], tanhc[b, t], gates[b, t]
        for j in range(H):
            pv[j] = hb[j]
        if t < steps[b]:
            for j in range(2 * H):   # i, f
                gv[j] = sigmoid(gv[j] + bias_ih[j] + bias_hh[j], half, one)
            for j in range(2 * H, 3 * H):   # g
                gv[j] = tanh(gv[j] + bias_ih[j] + bias_hh[j])
            for j in range(3 * H, 4 * H):   # o
                gv[j] = sigmoid(gv[j] + bias_ih[j] + bias_hh[j], half, one)
            for j in range(H):
                c_old = cb[j]
                cv[j] = c_old
                cb[j] = gv[H + j] * c_old + gv[j] * gv[2 * H + j]
            for j in range(H):
                tc = tanh(cb[j])
                tv[j] = tc
                hb[j] = gv[3 * H + j] * tc
        else:
            gv[:] = 0.0
            cv[:] = 0.0
            tv[:] = 0.0
        emit_output(out, b, t, col, hb, emit, t < steps[b])


def gru_step(t, steps, hw, bias_ih, bias_hh, h, prev, gates, hn, out, col, emit, H):
    """One step of a GRU, with p = x·W_ihᵀ (in gates[:, t]) and q = h·W_hhᵀ (hw):
    (r, z) = σ((p + b_ih) + (q + b_hh)) on their rows, n = tanh(p_n + b_in + r·(q_n + b_hn)),
    h' = (1 − z)·n + z·h."""
    half, one = h.dtype.type(0.5), h.dtype.type(1.0)
    for b in range(h.shape[0]):
        q, hb, pv, gv, nv = hw[b], h[b], prev[b, t], gates[b, t], hn[b, t]
        for j in range(H):
            pv[j] = hb[j]
        if t < steps[b]:
            for j in range(2 * H):   # r, z
                gv[j] = sigmoid((gv[j] + bias_ih[j]) + (q[j] + bias_hh[j]), half, one)
            for j in range(H):
                h_n = q[2 * H + j] + bias_hh[2 * H + j]
                nv[j] = h_n
                gv[2 * H + j] = tanh(gv[2 * H + j] + bias_ih[2 * H + j] + gv[j] * h_n)
            for j in range(H):
                z = gv[H + j]
                hb[j] = (one - z) * gv[2 * H + j] + z * hb[j]
        else:
            gv[:] = 0.0
            nv[:] = 0.0
        emit_output(out, b, t, col, hb, emit, t < steps[b])


# ---- one step back --------------------------------------------------------------------------
#
# Common arguments: t; steps; dh (B, H): the gradient of the state after step t, which leaves
# as the part of the previous state's gradient that does not pass through W_hh (the product
# with W_hh adds the rest); the LSTM's dc likewise, whole; d_out (B, T, W): the gradient of
# the layer's output sequence, at columns col..col + H, read when `seq`; the record sections;
# d_ih (B, T, G·H): the tape's gate gradients at step t (and the GRU's d_hh); H, the units,
# given for the reason above.  At a padded step the gate gradients are zeros and dh, dc pass
# through unchanged.


def rnn_step_back(t, steps, dh, d_out, col, seq, gates, d_ih, relu, H):
    """da = dh·act'(pre), from the new state (tanh: 1 − h'²; relu: h' > 0)."""
    zero, one = dh.dtype.type(0.0), dh.dtype.type(1.0)
    for b in range(dh.shape[0]):
        hb, gv, da = dh[b], gates[b, t], d_ih[b, t]
        g_out = d_out[b, t, col:col + H]
        if t < steps[b]:
            for j in range(H):
                dhj = hb[j] + g_out[j] if seq else hb[j]
                new = gv[j]
                da[j] = (dhj if new > zero else zero) if relu else dhj * (one - new * new)
                hb[j] = 0.0
        else:
            for j in range(H):
                da[j] = 0.0


def lstm_step_back(t, steps, dh, dc, d_out, col, seq, gates, cells, tanhc, d_ih, H):
    """dc += dh·o·(1 − tanh²c'); da = (dc·g·i(1−i), dc·c·f(1−f), dc·i·(1−g²),
    dh·tanh c'·o(1−o)); dc ← dc·f."""
    one = dh.dtype.type(1.0)
    for b in range(dh.shape[0]):
        hb, cb, gv, cv, tv, da = dh[b], dc[b], gates[b, t], cells[b, t], tanhc[b, t], d_ih[b, t]
        g_out = d_out[b, t, col:col + H]
        if t < steps[b]:
            gi, gf, gg, go = gv[0:H], gv[H:2 * H], gv[2 * H:3 * H], gv[3 * H:4 * H]
            di, df, dg, do = da[0:H], da[H:2 * H], da[2 * H:3 * H], da[3 * H:4 * H]
            for j in range(H):
                dhj = hb[j] + g_out[j] if seq else hb[j]
                i, f, g, o, tc = gi[j], gf[j], gg[j], go[j], tv[j]
                dcj = cb[j] + dhj * o * (one - tc * tc)
                di[j] = dcj * g * i * (one - i)
                df[j] = dcj * cv[j] * f * (one - f)
                dg[j] = dcj * i * (one - g * g)
                do[j] = dhj * tc * o * (one - o)
                cb[j] = dcj * f
                hb[j] = 0.0
        else:
            for j in range(da.size):
                da[j] = 0.0


def gru_step_back(t, steps, dh, d_out, col, seq, prev, gates, hn, d_ih, d_hh, H):
    """dn = dh(1−z)(1−n²), dz = dh(h−n)z(1−z), dr = dn·h_n·r(1−r); d_ih = (dr, dz, dn),
    d_hh = (dr, dz, dn·r); dh ← dh·z."""
    one = dh.dtype.type(1.0)
    for b in range(dh.shape[0]):
        hb, pv, gv, nv = dh[b], prev[b, t], gates[b, t], hn[b, t]
        ia, ha = d_ih[b, t], d_hh[b, t]
        g_out = d_out[b, t, col:col + H]
        if t < steps[b]:
            gr, gz, gn = gv[0:H], gv[H:2 * H], gv[2 * H:3 * H]
            ir, iz, i_n = ia[0:H], ia[H:2 * H], ia[2 * H:3 * H]
            hr, hz, h_n = ha[0:H], ha[H:2 * H], ha[2 * H:3 * H]
            for j in range(H):
                dhj = hb[j] + g_out[j] if seq else hb[j]
                r, z, n = gr[j], gz[j], gn[j]
                dn = dhj * (one - z) * (one - n * n)
                dz = dhj * (pv[j] - n) * z * (one - z)
                dr = dn * nv[j] * r * (one - r)
                ir[j], iz[j], i_n[j] = dr, dz, dn
                hr[j], hz[j], h_n[j] = dr, dz, dn * r
                hb[j] = dhj * z
        else:
            for j in range(ia.size):
                ia[j] = 0.0
                ha[j] = 0.0
