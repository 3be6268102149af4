"""Loop nests of batch norm, LRN, dropout and the noise ops, as plain Python: compiled in
netlang/runtime/.

The templates in netlang/ops/norm.py and netlang/ops/noise.py emit calls to these (compiled by
runtime/cnn.py, and the random draws by runtime/random_bits.py), one compiled function per
loop nest shared by every model (see netlang/ops/conv_loops.py for why).  The noise ops' loops
live here, beside the hash they draw from, because Numba's disk cache sees edits to a callee
only in the caller's own file (runtime/jit.py).  Batch norm and LRN work on the
(rows, C) view of an array of any rank, channels last; batch norm's per-channel sums
accumulate in float64.
"""

import numpy as np

# The dropout hash (splitmix64's output function) shared by the NumPy reference (norm.py),
# this mask's loop nest and the CUDA template, which writes it out with these constants.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


def dropout_bits(key, index):
    """64 random bits for element `index` (uint64, scalar or array) of the stream `key`.
    Written with NumPy uint64 operations only, so Numba compiles the very same function."""
    z = key + (index + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))

# ---- batch norm ----------------------------------------------------------------------------------

def channel_sums(x, g, acc, with_grad):
    """acc[0] ← Σx, acc[1] ← Σx² per channel (column) of x (rows, C); with_grad: also
    acc[2] ← Σg, acc[3] ← Σg·x."""
    C = x.shape[1]
    for i in range(4):
        for c in range(C):
            acc[i, c] = 0.0
    for r in range(x.shape[0]):
        for c in range(C):
            v = np.float64(x[r, c])
            acc[0, c] += v
            acc[1, c] += v * v
        if with_grad:
            for c in range(C):
                v = np.float64(x[r, c])
                gv = np.float64(g[r, c])
                acc[2, c] += gv
                acc[3, c] += gv * v


def batch_moments(acc, rows, c):
    """(mean, biased variance) of channel c from channel_sums."""
    n = max(rows, 1)
    mean = acc[0, c] / n
    return mean, max(acc[1, c] / n - mean * mean, 0.0)


def batchnorm_sums(x, acc, g, with_grad):
    """The per-channel sums of `channel_sums` over the (rows, C) view of x (and of g, with
    with_grad), C being acc's width; returns the rows.  A data-parallel gradient pass sums
    them across processes before it uses them (netlang/runtime/statistics.py)."""
    C = acc.shape[1]
    x = x.reshape((x.size // C, C))
    g = g.reshape((g.size // C, C))
    channel_sums(x, g, acc, with_grad)
    return x.shape[0]


def batchnorm_coefficients_from_sums(weight, running_mean, running_var, acc, coef, rows, eps,
                                     momentum, train, update):
    """coef[0] ← the mean and coef[1] ← weight/σ per channel: batch statistics from the sums
    acc over `rows` rows in training (and, with update, the running statistics moved towards
    them in place), running ones in evaluation."""
    for c in range(weight.size):
        if train:
            mean, var = batch_moments(acc, rows, c)
            if update:
                running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
                running_var[c] = ((1.0 - momentum) * running_var[c]
                                  + momentum * var * (rows / max(rows - 1, 1)))
        else:
            mean, var = np.float64(running_mean[c]), np.float64(running_var[c])
        coef[0, c] = mean
        coef[1, c] = weight[c] / np.sqrt(var + eps)


def batchnorm_coefficients(x, weight, running_mean, running_var, acc, coef, eps, momentum,
                           train, update):
    """`batchnorm_coefficients_from_sums` of x's own sums in training.  The output is
    (x − coef[0])·coef[1] + bias."""
    C = weight.size
    rows = x.size // C
    if train:
        channel_sums(x.reshape((rows, C)), x.reshape((rows, C)), acc, False)
    batchnorm_coefficients_from_sums(weight, running_mean, running_var, acc, coef, rows, eps,
                                     momentum, train, update)


def batchnorm_apply(x, coef, bias, out):
    """out = (x − coef[0])·coef[1] + bias, when no activation is fused into the loop."""
    C = bias.size
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for r in range(x.shape[0]):
        for c in range(C):
            out[r, c] = (x[r, c] - coef[0, c]) * coef[1, c] + bias[c]


def batchnorm_grad_input_from_sums(x, g, weight, out, acc, coef, rows, eps):
    """dx = w/σ · (g − mean(g) − x̂·mean(g·x̂)) from the sums acc (Σx, Σx², Σg, Σg·x) over
    `rows` rows, written as A·g + B·x + D per channel."""
    C = weight.size
    x = x.reshape((x.size // C, C))
    g = g.reshape((g.size // C, C))
    out = out.reshape((out.size // C, C))
    n = max(rows, 1)
    for c in range(C):
        mean, var = batch_moments(acc, rows, c)
        inv = 1.0 / np.sqrt(var + eps)
        gxhat = (acc[3, c] - mean * acc[2, c]) * inv
        a = weight[c] * inv
        b = -a * inv * gxhat / n
        coef[0, c] = a
        coef[1, c] = b
        coef[2, c] = -a * acc[2, c] / n - b * mean
    for r in range(x.shape[0]):
        for c in range(C):
            out[r, c] = coef[0, c] * g[r, c] + coef[1, c] * x[r, c] + coef[2, c]


def batchnorm_grad_input(x, g, weight, running_mean, running_var, out, acc, coef, eps, train):
    """dx with batch statistics (`batchnorm_grad_input_from_sums` of x's and g's own sums),
    w/σ · g in evaluation."""
    C = weight.size
    rows = x.size // C
    if train:
        channel_sums(x.reshape((rows, C)), g.reshape((rows, C)), acc, True)
        batchnorm_grad_input_from_sums(x, g, weight, out, acc, coef, rows, eps)
    else:
        g = g.reshape((rows, C))
        out = out.reshape((rows, C))
        for c in range(C):
            coef[0, c] = weight[c] / np.sqrt(np.float64(running_var[c]) + eps)
        for r in range(rows):
            for c in range(C):
                out[r, c] = coef[0, c] * g[r, c]


def batchnorm_grad_weight_from_sums(running_mean, running_var, out, acc, rows, eps, train):
    """d weight = Σ g·x̂ per channel, from the sums acc; x̂ by the batch statistics of `rows`
    rows in training, by the running ones in evaluation."""
    for c in range(out.size):
        if train:
            mean, var = batch_moments(acc, rows, c)
        else:
            mean, var = np.float64(running_mean[c]), np.float64(running_var[c])
        out[c] = (acc[3, c] - mean * acc[2, c]) / np.sqrt(var + eps)


def batchnorm_grad_weight(x, g, running_mean, running_var, out, acc, eps, train):
    """d weight = Σ g·x̂ per channel (`batchnorm_grad_weight_from_sums` of x's and g's sums)."""
    C = out.size
    rows = x.size // C
    channel_sums(x.reshape((rows, C)), g.reshape((rows, C)), acc, True)
    batchnorm_grad_weight_from_sums(running_mean, running_var, out, acc, rows, eps, train)


# ---- local response normalisation across channels ------------------------------------------------

def lrn_forward(x, out, before, after, alpha_n, beta, k):
    """out = x · (k + alpha_n · Σ x² over channels c − before … c + after)^−beta."""
    C = x.shape[-1]
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for r in range(x.shape[0]):
        for c in range(C):
            s = 0.0
            for j in range(max(c - before, 0), min(c + after + 1, C)):
                s += np.float64(x[r, j]) * x[r, j]
            out[r, c] = x[r, c] * (k + alpha_n * s) ** -beta


def lrn_backward(x, g, out, work, before, after, alpha_n, beta, k):
    """dx = g·b^−β − 2·alpha_n·β · x · Σ over the windows holding x of g·x·b^(−β−1), where
    b = k + alpha_n·Σx²; work (2, C) holds a row's b^−β and g·x·b^(−β−1)."""
    C = x.shape[-1]
    x = x.reshape((x.size // C, C))
    g = g.reshape((g.size // C, C))
    out = out.reshape((out.size // C, C))
    for r in range(x.shape[0]):
        for c in range(C):
            s = 0.0
            for j in range(max(c - before, 0), min(c + after + 1, C)):
                s += np.float64(x[r, j]) * x[r, j]
            base = k + alpha_n * s
            scaled = base ** -beta
            work[0, c] = scaled
            work[1, c] = g[r, c] * x[r, c] * scaled / base
        # Channel c lies in channel j's window when j − after ≤ c ≤ j + before.
        for c in range(C):
            s = 0.0
            for j in range(max(c - after, 0), min(c + before + 1, C)):
                s += work[1, j]
            out[r, c] = g[r, c] * work[0, c] - 2.0 * alpha_n * beta * x[r, c] * s


# ---- dropout -------------------------------------------------------------------------------------

def fill_dropout_mask(out, key, threshold, scale):
    """out[i] ← scale where element i is kept (top 32 bits of its hash ≥ threshold), else 0."""
    zero = scale - scale
    for i in range(out.size):
        keep = (dropout_bits(key, np.uint64(i)) >> np.uint64(32)) >= threshold
        out[i] = scale if keep else zero


# ---- noise (netlang/ops/noise.py): uniform and normal draws from the same hash ------------------
#
# Element i of a stream `key` is a function of (key, i) alone, as a dropout mask's is: a uniform
# draw is the top 53 bits of the hash of (key, i), centred in their interval, so it lies in
# (0, 1) and never reaches 0 or 1.  Normal draws come in pairs, by Box and Muller's transform:
# pair p turns the uniform draws of indices 2p and 2p + 1 into a radius and an angle, and
# gives elements 2p (the cosine's) and 2p + 1 (the sine's), so one logarithm and one square
# root serve two elements.  All of it in float64, rounded once to the engine's type.

UNIT_53 = 2.0 ** -53
TWO_PI = 2.0 * np.pi


def uniform_draw(key, index):
    """A uniform draw in (0, 1) for element `index` (uint64, scalar or array) of stream `key`."""
    return (np.float64(dropout_bits(key, index) >> np.uint64(11)) + 0.5) * UNIT_53


def normal_pair(key, pair):
    """The standard normal draws of elements 2·pair and 2·pair + 1 (uint64 `pair`, scalar or
    array) of stream `key`."""
    radius = np.sqrt(-2.0 * np.log(uniform_draw(key, pair * np.uint64(2))))
    angle = TWO_PI * uniform_draw(key, pair * np.uint64(2) + np.uint64(1))
    return radius * np.cos(angle), radius * np.sin(angle)


def fill_normal(out, key, mean, std):
    """out[i] ← mean + std · (normal draw i of stream `key`)."""
    size = out.size
    for pair in range((size + 1) // 2):
        first, second = normal_pair(key, np.uint64(pair))
        out[2 * pair] = mean + std * first
        if 2 * pair + 1 < size:
            out[2 * pair + 1] = mean + std * second


def fill_reparameterised(out, mu, logvar, key):
    """out[i] ← mu[i] + exp(logvar[i] / 2) · (normal draw i of stream `key`), in float64."""
    size = out.size
    for pair in range((size + 1) // 2):
        first, second = normal_pair(key, np.uint64(pair))
        i = 2 * pair
        out[i] = np.float64(mu[i]) + np.exp(0.5 * np.float64(logvar[i])) * first
        if i + 1 < size:
            out[i + 1] = np.float64(mu[i + 1]) + np.exp(0.5 * np.float64(logvar[i + 1])) * second


def fill_bernoulli(out, p, key):
    """out[i] ← 1 where uniform draw i of stream `key` falls below p[i], else 0."""
    for i in range(out.size):
        out[i] = 1.0 if uniform_draw(key, np.uint64(i)) < np.float64(p[i]) else 0.0
