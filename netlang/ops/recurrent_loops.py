"""Loop nests of the recurrent layers' CPU kernels, as plain Python: compiled by
netlang.runtime.recurrent.

The templates (netlang/ops/recurrent_kernels.py) emit, for each layer and direction, one
matrix product for the input's part of every step's gates, then the loop over time: per step
one product h·W_hhᵀ and one call of a `*_step` below, which adds the two parts and the biases,
applies the gate nonlinearities and writes the new state, the record (netlang/ops/
recurrent_reference.py `record_layout`) and the output, all in one pass over the step's
values.  Back through time, per step, one `*_step_back` writes the gradients of the gate
pre-activations (the tape) and leaves in `dh` what does not pass through W_hh, and one product
with W_hh adds the rest.  Nothing is allocated: states, gradients and products live in the
kernel's workspaces and in the record and tape.

Arrays are C-contiguous views made once by the generated code: a sequence section (B, T, X),
a state (B, H), a bias (G·H,).  `steps` holds each example's length (T without `lengths`): a
step at or past it is padding, which keeps the state, outputs zeros, records zeros and
passes gradients through unchanged, as in the reference.  Each step's innermost loop runs
over one example's H contiguous units, on one-dimensional views of each gate's block, so
that it vectorises.

The nonlinearities are `tanh` and `sigmoid` below (the reference's formulas): NumPy's exact
tanh, which is what the plain Python runs and what the float64 kernels compile.  The float32
kernels bind `tanh` to `rational_tanh`, which vectorises (see there).
"""

import numpy as np

from netlang.errors import DataError

# Eigen's rational approximation of tanh in float32 (numerator p(x²)·x, denominator q(x²)),
# exact to within 2 float32 ulps on the range it clamps to; beyond it tanh is ±1 in float32.
_TANH_CLAMP = np.float32(7.90531110763549805)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(v) for v in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_Q0, _Q1, _Q2, _Q3 = (np.float32(v) for v in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))


def rational_tanh(v):
    """tanh(v) for float32 v, in arithmetic alone: Numba's tanh is a call into the C library
    per element (about 15-25 ns), which no loop around it can vectorise; this is a few
    vector instructions per 16 elements."""
    v = v if v < _TANH_CLAMP else _TANH_CLAMP
    v = v if v > -_TANH_CLAMP else -_TANH_CLAMP
    v2 = v * v
    p = v2 * _P0 + _P1
    p = v2 * p + _P2
    p = v2 * p + _P3
    p = v2 * p + _P4
    p = v2 * p + _P5
    p = v2 * p + _P6
    q = v2 * _Q0 + _Q1
    q = v2 * q + _Q2
    q = v2 * q + _Q3
    return v * p / q


def tanh(v):
    """The hyperbolic tangent (the float32 kernels compile `rational_tanh` in its place)."""
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


def copy_flat(source, offset, target):
    """target ← source's flat elements from `offset` on (a section of a record)."""
    flat_source = source.reshape(source.size)
    flat_target = target.reshape(target.size)
    for i in range(flat_target.size):
        flat_target[i] = flat_source[offset + i]


# ---- one step forward -----------------------------------------------------------------------
#
# Common arguments: t, the step; steps (B,); proj (B, T, G·H): every step's x·W_ihᵀ; hw (B, G·H):
# this step's h·W_hhᵀ; the biases; h (B, H) (and the LSTM's c): the state, updated in place;
# prev, gates (and CELL_EXTRAS): the cell's record sections (B, T, ·); out (B, T, W): where the
# output goes, at columns col..col + H, when `emit` (the top layer of a layer returning its
# final states emits none).


def rnn_step(t, steps, proj, hw, bias_ih, bias_hh, h, prev, gates, out, col, emit, relu):
    """One step of an Elman layer: h' = act(proj + hw + b_ih + b_hh)."""
    H = h.shape[1]
    zero = h.dtype.type(0.0)
    for b in range(h.shape[0]):
        p, q, hb, pv, gv = proj[b, t], hw[b], h[b], prev[b, t], gates[b, t]
        o = out[b, t, col:col + H]
        if t < steps[b]:
            for j in range(H):
                pre = p[j] + bias_ih[j] + q[j] + bias_hh[j]
                new = (pre if pre > zero else zero) if relu else tanh(pre)
                pv[j] = hb[j]
                gv[j] = new
                hb[j] = new
                if emit:
                    o[j] = new
        else:
            for j in range(H):
                pv[j] = hb[j]
                gv[j] = 0.0
                if emit:
                    o[j] = 0.0


def lstm_step(t, steps, proj, hw, bias_ih, bias_hh, h, c, prev, gates, cells, tanhc, out, col,
              emit):
    """One step of an LSTM: (i, f, g, o) = (σ, σ, tanh, σ)(proj + hw + b_ih + b_hh),
    c' = f·c + i·g, h' = o·tanh(c')."""
    H = h.shape[1]
    half, one = h.dtype.type(0.5), h.dtype.type(1.0)
    for b in range(h.shape[0]):
        p, q, hb, cb = proj[b, t], hw[b], h[b], c[b]
        pv, cv, tv, gv = prev[b, t], cells[b, t], tanhc[b, t], gates[b, t]
        o = out[b, t, col:col + H]
        if t < steps[b]:
            gi, gf, gg, go = gv[0:H], gv[H:2 * H], gv[2 * H:3 * H], gv[3 * H:4 * H]
            pi, pf, pg, po = p[0:H], p[H:2 * H], p[2 * H:3 * H], p[3 * H:4 * H]
            qi, qf, qg, qo = q[0:H], q[H:2 * H], q[2 * H:3 * H], q[3 * H:4 * H]
            bi, bf, bg, bo = bias_ih[0:H], bias_ih[H:2 * H], bias_ih[2 * H:3 * H], bias_ih[3 * H:]
            ci, cf, cg, co = bias_hh[0:H], bias_hh[H:2 * H], bias_hh[2 * H:3 * H], bias_hh[3 * H:]
            for j in range(H):
                i = sigmoid(pi[j] + bi[j] + qi[j] + ci[j], half, one)
                f = sigmoid(pf[j] + bf[j] + qf[j] + cf[j], half, one)
                g = tanh(pg[j] + bg[j] + qg[j] + cg[j])
                og = sigmoid(po[j] + bo[j] + qo[j] + co[j], half, one)
                c_old = cb[j]
                c_new = f * c_old + i * g
                tc = tanh(c_new)
                gi[j], gf[j], gg[j], go[j] = i, f, g, og
                pv[j], cv[j], tv[j] = hb[j], c_old, tc
                cb[j] = c_new
                hb[j] = og * tc
                if emit:
                    o[j] = og * tc
        else:
            for j in range(H):
                pv[j], cv[j], tv[j] = hb[j], 0.0, 0.0
                if emit:
                    o[j] = 0.0
            for j in range(gv.size):
                gv[j] = 0.0


def gru_step(t, steps, proj, hw, bias_ih, bias_hh, h, prev, gates, hn, out, col, emit):
    """One step of a GRU: (r, z) = σ(proj + b_ih + hw + b_hh) on their rows,
    n = tanh(proj_n + b_in + r·(hw_n + b_hn)), h' = (1 − z)·n + z·h."""
    H = h.shape[1]
    half, one = h.dtype.type(0.5), h.dtype.type(1.0)
    for b in range(h.shape[0]):
        p, q, hb, pv, gv, nv = proj[b, t], hw[b], h[b], prev[b, t], gates[b, t], hn[b, t]
        o = out[b, t, col:col + H]
        if t < steps[b]:
            gr, gz, gn = gv[0:H], gv[H:2 * H], gv[2 * H:3 * H]
            pr, pz, pn = p[0:H], p[H:2 * H], p[2 * H:3 * H]
            qr, qz, qn = q[0:H], q[H:2 * H], q[2 * H:3 * H]
            br, bz, bn = bias_ih[0:H], bias_ih[H:2 * H], bias_ih[2 * H:3 * H]
            cr, cz, cn = bias_hh[0:H], bias_hh[H:2 * H], bias_hh[2 * H:3 * H]
            for j in range(H):
                r = sigmoid((pr[j] + br[j]) + (qr[j] + cr[j]), half, one)
                z = sigmoid((pz[j] + bz[j]) + (qz[j] + cz[j]), half, one)
                h_n = qn[j] + cn[j]
                n = tanh(pn[j] + bn[j] + r * h_n)
                h_old = hb[j]
                new = (one - z) * n + z * h_old
                gr[j], gz[j], gn[j] = r, z, n
                pv[j], nv[j] = h_old, h_n
                hb[j] = new
                if emit:
                    o[j] = new
        else:
            for j in range(H):
                pv[j], nv[j] = hb[j], 0.0
                if emit:
                    o[j] = 0.0
            for j in range(gv.size):
                gv[j] = 0.0


# ---- one step back --------------------------------------------------------------------------
#
# Common arguments: t; steps; dh (B, H): the gradient of the state after step t, which leaves
# as the part of the previous state's gradient that does not pass through W_hh (the product
# with W_hh adds the rest); the LSTM's dc likewise, whole; d_out (B, T, W): the gradient of
# the layer's output sequence, at columns col..col + H, read when `seq`; the record sections;
# d_ih (B, T, G·H): the tape's gate gradients at step t (and the GRU's d_hh).  At a padded
# step the gate gradients are zeros and dh, dc pass through unchanged.


def rnn_step_back(t, steps, dh, d_out, col, seq, gates, d_ih, relu):
    """da = dh·act'(pre), from the new state (tanh: 1 − h'²; relu: h' > 0)."""
    H = dh.shape[1]
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


def lstm_step_back(t, steps, dh, dc, d_out, col, seq, gates, cells, tanhc, d_ih):
    """dc += dh·o·(1 − tanh²c'); da = (dc·g·i(1−i), dc·c·f(1−f), dc·i·(1−g²),
    dh·tanh c'·o(1−o)); dc ← dc·f."""
    H = dh.shape[1]
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


def gru_step_back(t, steps, dh, d_out, col, seq, prev, gates, hn, d_ih, d_hh):
    """dn = dh(1−z)(1−n²), dz = dh(h−n)z(1−z), dr = dn·h_n·r(1−r); d_ih = (dr, dz, dn),
    d_hh = (dr, dz, dn·r); dh ← dh·z."""
    H = dh.shape[1]
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
