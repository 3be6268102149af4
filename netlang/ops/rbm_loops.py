"""The restricted Boltzmann machine's loop nests, in the subset of Python Numba compiles.

netlang/runtime/rbm.py compiles them for the CPU kernels of netlang/ops/rbm.py, whose NumPy
reference computes the same values from the same draws: the index scheme of `chain_index` and
the arithmetic (float64 throughout, rounded once into the output) are shared by both.

Shapes: `weight` is (hidden, visible) as a dense layer's (so a dense layer can share it),
`hidden_bias` (hidden,), `visible_bias` (visible,); rows of `v` are visible vectors.
"""

from __future__ import annotations

import numpy as np

from netlang.ops.norm_loops import normal_pair, uniform_draw


def chain_index(block, rows, hidden, visible):
    """The first draw index of block `block` of a chain over `rows` rows: step s of the chain
    draws its hidden units in block 2s and its visible units in block 2s + 1.  Each block holds
    2·rows·(hidden + visible) indices, room for a uniform draw per unit or a normal pair (two
    uniform draws) per unit, so no two draws of one call share an index."""
    return block * 2 * rows * (hidden + visible)


def softplus(a):
    """log(1 + exp(a)) without overflow."""
    return max(a, 0.0) + np.log1p(np.exp(-abs(a)))


def logistic(a):
    """σ(a) = ½(1 + tanh(a/2)): no overflow, and the NumPy reference's formula to the last bit,
    so a draw compares with the same probability on every engine."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def hidden_probabilities(v, weight, hidden_bias):
    """σ(v·Wᵀ + c) in float64, one row per row of `v` (float64)."""
    pre = np.dot(v, np.ascontiguousarray(weight.T).astype(np.float64))
    for r in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            pre[r, j] = logistic(pre[r, j] + hidden_bias[j])
    return pre


def gibbs_chain(start, weight, hidden_bias, visible_bias, steps, key, gaussian, out):
    """out ← the visible units after `steps` alternating Gibbs steps from `start`: each step
    draws h ~ p(h | v) (binary), then v ~ p(v | h) (binary: σ(h·W + b); Gaussian: N(h·W + b, 1))."""
    rows, visible = start.shape
    hidden = weight.shape[0]
    w = np.ascontiguousarray(weight).astype(np.float64)
    v = np.ascontiguousarray(start).astype(np.float64)
    h = np.empty((rows, hidden))
    for s in range(steps):
        p = hidden_probabilities(v, weight, hidden_bias)
        base = chain_index(2 * s, rows, hidden, visible)
        for r in range(rows):
            for j in range(hidden):
                index = np.uint64(base + r * hidden + j)
                h[r, j] = 1.0 if uniform_draw(key, index) < p[r, j] else 0.0
        mean = np.dot(h, w)
        base = chain_index(2 * s + 1, rows, hidden, visible)
        for r in range(rows):
            for i in range(visible):
                centre = mean[r, i] + visible_bias[i]
                if gaussian:
                    first, _ = normal_pair(key, np.uint64(base // 2 + r * visible + i))
                    v[r, i] = centre + first
                else:
                    index = np.uint64(base + r * visible + i)
                    v[r, i] = 1.0 if uniform_draw(key, index) < logistic(centre) else 0.0
    for r in range(rows):
        for i in range(visible):
            out[r, i] = v[r, i]


def free_energies(v, weight, hidden_bias, visible_bias, gaussian):
    """F(v) per row in float64: −b·v − Σⱼ softplus(v·Wᵀ + c)ⱼ for binary visible units,
    ½‖v − b‖² − Σⱼ softplus(v·Wᵀ + c)ⱼ for Gaussian ones."""
    rows, visible = v.shape
    pre = np.dot(v, np.ascontiguousarray(weight.T).astype(np.float64))
    energies = np.zeros(rows)
    for r in range(rows):
        total = 0.0
        for i in range(visible):
            if gaussian:
                total += 0.5 * (v[r, i] - visible_bias[i]) ** 2
            else:
                total -= visible_bias[i] * v[r, i]
        for j in range(pre.shape[1]):
            total -= softplus(pre[r, j] + hidden_bias[j])
        energies[r] = total
    return energies


def free_energy_gap(x, model, weight, hidden_bias, visible_bias, gaussian, persistent, out):
    """out[e] ← F(x_e) − F(model_e) (contrastive divergence: one model row per example), or
    F(x_e) − mean over the chains of F(model_n) (persistent)."""
    data = free_energies(np.ascontiguousarray(x).astype(np.float64), weight, hidden_bias,
                         visible_bias, gaussian)
    negative = free_energies(np.ascontiguousarray(model).astype(np.float64), weight,
                             hidden_bias, visible_bias, gaussian)
    average = negative.sum() / negative.shape[0]
    for e in range(out.shape[0]):
        out[e] = data[e] - (average if persistent else negative[e])


def row_weights(g, model_rows, persistent):
    """How much each model row weighs in the gradient (g in float64): its example's g
    (contrastive divergence), or Σg / chains (persistent: each chain enters every example's gap
    through the mean over the chains)."""
    if persistent:
        return np.full(model_rows, g.sum() / model_rows)
    return g.copy()


def gradient_input(g, x, weight, hidden_bias, visible_bias, gaussian, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂x = gₑ·∂F(xₑ)/∂xₑ: −p(h|x)·W − b (Gaussian: + x)."""
    xd = np.ascontiguousarray(x).astype(np.float64)
    grad = -np.dot(hidden_probabilities(xd, weight, hidden_bias),
                   np.ascontiguousarray(weight).astype(np.float64))
    for e in range(xd.shape[0]):
        for i in range(xd.shape[1]):
            visible_part = xd[e, i] - visible_bias[i] if gaussian else -visible_bias[i]
            out[e, i] = g[e] * (grad[e, i] + visible_part)


def weighted_hidden(v, weight, hidden_bias, row_weight):
    """p(h|v) per row, each row scaled by its weight in the gradient."""
    p = hidden_probabilities(v, weight, hidden_bias)
    for r in range(p.shape[0]):
        for j in range(p.shape[1]):
            p[r, j] *= row_weight[r]
    return p


def gradient_weight(g, x, model, weight, hidden_bias, persistent, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂W with the model rows held constant: Σ_model w·p(h|ṽ)ᵀṽ −
    Σₑ gₑ·p(h|xₑ)ᵀxₑ, since ∂F/∂W = −p(h|v)ᵀ·v."""
    xd = np.ascontiguousarray(x).astype(np.float64)
    md = np.ascontiguousarray(model).astype(np.float64)
    gd = g.astype(np.float64)
    positive = weighted_hidden(xd, weight, hidden_bias, gd)
    negative = weighted_hidden(md, weight, hidden_bias, row_weights(gd, md.shape[0], persistent))
    grad = (np.dot(np.ascontiguousarray(negative.T), md)
            - np.dot(np.ascontiguousarray(positive.T), xd))
    for j in range(grad.shape[0]):
        for i in range(grad.shape[1]):
            out[j, i] = grad[j, i]


def gradient_hidden_bias(g, x, model, weight, hidden_bias, persistent, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂c with the model rows held constant (∂F/∂c = −p(h|v))."""
    xd = np.ascontiguousarray(x).astype(np.float64)
    md = np.ascontiguousarray(model).astype(np.float64)
    gd = g.astype(np.float64)
    positive = weighted_hidden(xd, weight, hidden_bias, gd)
    negative = weighted_hidden(md, weight, hidden_bias, row_weights(gd, md.shape[0], persistent))
    for j in range(out.shape[0]):
        out[j] = negative[:, j].sum() - positive[:, j].sum()


def gradient_visible_bias(g, x, model, visible_bias, gaussian, persistent, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂b with the model rows held constant (∂F/∂b = −v; Gaussian:
    −(v − b))."""
    gd = g.astype(np.float64)
    wm = row_weights(gd, model.shape[0], persistent)
    for i in range(out.shape[0]):
        shift = visible_bias[i] if gaussian else 0.0
        total = 0.0
        for e in range(x.shape[0]):
            total -= gd[e] * (x[e, i] - shift)
        for n in range(model.shape[0]):
            total += wm[n] * (model[n, i] - shift)
        out[i] = total
