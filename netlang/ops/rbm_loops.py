"""The restricted Boltzmann machine's loop nests, in the subset of Python Numba compiles.

netlang/runtime/rbm.py compiles them for the CPU kernels of netlang/ops/rbm.py, whose NumPy
reference computes the same values from the same draws.  What the two share, and so every
engine's contract:

- the index scheme of `chain_index`;
- the units' inputs v·Wᵀ + c (hidden) and h·W + b (visible) are computed in the model's dtype,
  as a dense layer computes them: a matrix product (BLAS, in the kernels the templates write
  around these loops) and then the bias added in that dtype;
- everything after them is float64: the logistic and the softplus of each input, the free
  energies' sums, and the comparison of each uniform draw with its probability.

So in float64 models every engine computes alike to the last bit, and in float32 models up to
the summation order of the products; a draw can differ between engines only where its uniform
lies within that rounding of its probability.

Shapes: `weight` is (hidden, visible) as a dense layer's (so a dense layer can share it),
`hidden_bias` (hidden,), `visible_bias` (visible,); rows of `v` are visible vectors, and a row of
hidden inputs (`pre`) is v·Wᵀ, or v·Wᵀ + c where the name says so.
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


def draw_hidden(product, hidden_bias, key, base, h):
    """h ← binary draws of p(h = 1 | v) = σ(v·Wᵀ + c), `product` holding v·Wᵀ: draw
    base + r·hidden + j decides unit j of row r."""
    hidden = h.shape[1]
    for r in range(h.shape[0]):
        for j in range(hidden):
            p = logistic(np.float64(product[r, j] + hidden_bias[j]))
            h[r, j] = 1.0 if uniform_draw(key, np.uint64(base + r * hidden + j)) < p else 0.0


def draw_visible(product, visible_bias, key, base, gaussian, v):
    """v ← draws of p(v | h), `product` holding h·W: binary units are 1 with probability
    σ(h·W + b) (draw base + r·visible + i), Gaussian ones N(h·W + b, 1) (the first of normal pair
    base / 2 + r·visible + i)."""
    visible = v.shape[1]
    for r in range(v.shape[0]):
        for i in range(visible):
            centre = np.float64(product[r, i] + visible_bias[i])
            if gaussian:
                first, _ = normal_pair(key, np.uint64(base // 2 + r * visible + i))
                v[r, i] = centre + first
            else:
                index = np.uint64(base + r * visible + i)
                v[r, i] = 1.0 if uniform_draw(key, index) < logistic(centre) else 0.0


def free_energies(v, pre, visible_bias, gaussian, energies):
    """energies[r] ← F(v_r) in float64 from the row's hidden inputs pre = v·Wᵀ + c:
    −b·v − Σⱼ softplus(pre)ⱼ for binary visible units, ½‖v − b‖² − Σⱼ softplus(pre)ⱼ for
    Gaussian ones."""
    for r in range(v.shape[0]):
        total = 0.0
        for i in range(v.shape[1]):
            if gaussian:
                total += 0.5 * (np.float64(v[r, i]) - np.float64(visible_bias[i])) ** 2
            else:
                total -= np.float64(visible_bias[i]) * np.float64(v[r, i])
        for j in range(pre.shape[1]):
            total -= softplus(np.float64(pre[r, j]))
        energies[r] = total


def free_energy_gap(x, model, visible_bias, pre_data, pre_model, gaussian, persistent, out):
    """out[e] ← F(x_e) − F(model_e) (contrastive divergence: one model row per example), or
    F(x_e) − mean over the chains of F(model_n) (persistent); the hidden inputs v·Wᵀ + c of
    the rows are given."""
    data = np.empty(x.shape[0])
    negative = np.empty(model.shape[0])
    free_energies(x, pre_data, visible_bias, gaussian, data)
    free_energies(model, pre_model, visible_bias, gaussian, negative)
    average = negative.sum() / negative.shape[0]
    for e in range(out.shape[0]):
        out[e] = data[e] - (average if persistent else negative[e])


def row_weights(g, model_rows, persistent):
    """How much each model row weighs in the gradient (float64): its example's g (contrastive
    divergence), or Σg / chains (persistent: each chain enters every example's gap through the
    mean over the chains)."""
    weights = np.empty(model_rows)
    if persistent:
        total = 0.0
        for e in range(g.shape[0]):
            total += np.float64(g[e])
        weights[:] = total / model_rows
    else:
        for n in range(model_rows):
            weights[n] = np.float64(g[n])
    return weights


def gradient_input(g, x, visible_bias, gaussian, out):
    """out ← gₑ·∂F(xₑ)/∂xₑ with the hidden inputs held: −b (Gaussian: xₑ − b).  The part
    through xₑ·Wᵀ is the dense product's gradient."""
    for e in range(x.shape[0]):
        for i in range(x.shape[1]):
            shift = np.float64(visible_bias[i])
            part = np.float64(x[e, i]) - shift if gaussian else -shift
            out[e, i] = np.float64(g[e]) * part


def gradient_data_hidden(g, pre_data, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂pre_data = −gₑ·σ(pre_data), since ∂F/∂pre = −σ(pre)."""
    for e in range(pre_data.shape[0]):
        for j in range(pre_data.shape[1]):
            out[e, j] = -np.float64(g[e]) * logistic(np.float64(pre_data[e, j]))


def gradient_model_hidden(g, pre_model, persistent, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂pre_model = w_n·σ(pre_model), w_n the row's weight
    (`row_weights`)."""
    weights = row_weights(g, pre_model.shape[0], persistent)
    for n in range(pre_model.shape[0]):
        for j in range(pre_model.shape[1]):
            out[n, j] = weights[n] * logistic(np.float64(pre_model[n, j]))


def gradient_visible_bias(g, x, model, visible_bias, gaussian, persistent, out):
    """out ← ∂(Σₑ gₑ·gapₑ)/∂b with the model rows held constant (∂F/∂b = −v; Gaussian:
    −(v − b))."""
    weights = row_weights(g, model.shape[0], persistent)
    for i in range(out.shape[0]):
        shift = np.float64(visible_bias[i]) if gaussian else 0.0
        total = 0.0
        for e in range(x.shape[0]):
            total -= np.float64(g[e]) * (np.float64(x[e, i]) - shift)
        for n in range(model.shape[0]):
            total += weights[n] * (np.float64(model[n, i]) - shift)
        out[i] = total
