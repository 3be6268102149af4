"""The convolution, pooling and normalisation reference ops against PyTorch.

Each drawn configuration is compiled as a one-layer `.net` model ending in a squared-error
loss and run through the reference engine in float64, forward and backward; PyTorch computes
the same loss on the same numbers (channels-last permuted to its channels-first).  Outputs,
the loss and the gradients of the input and of every parameter must agree to a relative error
below 1e-6.  Also: batch norm's running statistics over several training steps against
`torch.nn.BatchNorm2d`, a small CNN of every op end to end, and the textbook pooling example.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import netlang
from netlang.ops.conv import resolve_padding
from netlang.ops.pool import pool_output_size
from netlang.runtime.reference import ReferenceEngine

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-6
DRAWN = settings(max_examples=30, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FEWER = settings(DRAWN, max_examples=15)


def rel_error(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape}, torch {b.shape}"
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-12))


def dims(shape) -> str:
    return ", ".join(map(str, shape))


def nchw(a):
    return a.permute(0, 3, 1, 2) if a.dim() == 4 else a


def nhwc(a):
    return a.permute(0, 2, 3, 1) if a.dim() == 4 else a


def check_layer(chain, x, params, torch_fn, out_shape, mode="train", note=""):
    """`y = x -> chain` (layer `L`) against torch_fn(x_nchw, torch params) → y_nchw."""
    source = (f"input x: [{dims(x.shape[1:])}]\ninput t: [{dims(out_shape)}]\n"
              f"y = x -> {chain} as L\noutput y\ntrain {{ loss squared_error(y, t) }}\n")
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(x.size)
    t = rng.normal(0.0, 1.0, (x.shape[0],) + tuple(out_shape))
    engine = ReferenceEngine(graph, params={k: v.copy() for k, v in params.items()},
                             dtype=np.float64, input_grads=("x",))
    assert set(engine.trainable) == set(params) - {"L.running_mean", "L.running_var"}, note
    loss, grads, outputs = engine.gradients({"x": x, "t": t}, mode=mode)

    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in engine.trainable)
          for k, v in params.items()}
    ty = nhwc(torch_fn(nchw(tx), tp))
    tloss = 0.5 * ((ty - torch.tensor(t)) ** 2).sum() / x.shape[0]
    tloss.backward()

    assert rel_error(outputs["y"], ty.detach().numpy()) < TOL, f"{note}: output"
    assert rel_error(loss, tloss.item()) < TOL, f"{note}: loss"
    assert rel_error(grads["x"], tx.grad.numpy()) < TOL, f"{note}: d/dx"
    for name in engine.trainable:
        assert rel_error(grads[name], tp[name].grad.numpy()) < TOL, f"{note}: d/d {name}"
    return engine, tp


# ---- convolutions ----------------------------------------------------------------------------

PADDINGS = st.one_of(
    st.sampled_from(["valid", "same"]),
    st.integers(0, 2),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3))),
)


def explicit(p):
    """A drawn padding as the language stores it: `same`, `valid` or ((t, b), (l, r))."""
    if isinstance(p, str) or isinstance(p[0] if isinstance(p, tuple) else None, tuple):
        return p
    rows, cols = (p, p) if isinstance(p, int) else p
    return ((rows, rows), (cols, cols))


def padding_source(p) -> str:
    return p if isinstance(p, str) else repr(p)


@DRAWN
@given(batch=st.integers(1, 2), hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
       groups=st.integers(1, 3), cin_g=st.integers(1, 2), f_g=st.integers(1, 3),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=PADDINGS, bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch(batch, hw, groups, cin_g, f_g, kernel, stride, dilation, padding,
                              bias, seed):
    cin, filters = groups * cin_g, groups * f_g
    pads = resolve_padding(hw, kernel, stride, dilation, explicit(padding))
    out = [(n + p0 + p1 - d * (k - 1) - 1) // s + 1
           for n, (p0, p1), k, s, d in zip(hw, pads, kernel, stride, dilation)]
    assume(min(out) >= 1)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (batch,) + hw + (cin,))
    params = {"L.weight": rng.normal(0.0, 0.5, (filters, cin_g) + kernel)}
    if bias:
        params["L.bias"] = rng.normal(0.0, 0.5, (filters,))
    chain = (f"conv2d({filters}, {kernel}, stride = {stride}, padding = {padding_source(padding)}, "
             f"dilation = {dilation}, groups = {groups}, bias = {str(bias).lower()})")
    (t, b), (l, r) = pads

    def conv(tx, tp):
        return F.conv2d(F.pad(tx, (l, r, t, b)), tp["L.weight"], tp.get("L.bias"), stride, 0,
                        dilation, groups)

    check_layer(chain, x, params, conv, out + [filters], note=chain)
    if padding == "same" and stride == (1, 1):  # PyTorch's own `same` agrees at stride 1
        def same(tx, tp):
            warnings.filterwarnings("ignore", "Using padding='same'", UserWarning)
            return F.conv2d(tx, tp["L.weight"], tp.get("L.bias"), 1, "same", dilation, groups)
        check_layer(chain, x, params, same, out + [filters], note=chain + " (torch same)")


@DRAWN
@given(batch=st.integers(1, 2), hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       groups=st.integers(1, 3), cin_g=st.integers(1, 2), f_g=st.integers(1, 2),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       output_padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_transpose2d_matches_torch(batch, hw, groups, cin_g, f_g, kernel, stride, dilation,
                                        padding, output_padding, bias, seed):
    assume(all(op < max(s, d) for op, s, d in zip(output_padding, stride, dilation)))
    out = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1
           for n, k, s, p, op, d in zip(hw, kernel, stride, padding, output_padding, dilation)]
    assume(min(out) >= 1)
    cin, filters = groups * cin_g, groups * f_g
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (batch,) + hw + (cin,))
    params = {"L.weight": rng.normal(0.0, 0.5, (cin, f_g) + kernel)}
    if bias:
        params["L.bias"] = rng.normal(0.0, 0.5, (filters,))
    chain = (f"conv_transpose2d({filters}, {kernel}, stride = {stride}, padding = {padding}, "
             f"output_padding = {output_padding}, dilation = {dilation}, groups = {groups}, "
             f"bias = {str(bias).lower()})")

    def conv_t(tx, tp):
        return F.conv_transpose2d(tx, tp["L.weight"], tp.get("L.bias"), stride, padding,
                                  output_padding, groups, dilation)

    check_layer(chain, x, params, conv_t, out + [filters], note=chain)


# ---- pooling ---------------------------------------------------------------------------------

@DRAWN
@given(batch=st.integers(1, 2), hw=st.tuples(st.integers(1, 8), st.integers(1, 8)),
       channels=st.integers(1, 3), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), ceil_mode=st.booleans(),
       average=st.booleans(), count_include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_pool_matches_torch(batch, hw, channels, kernel, stride, padding, ceil_mode, average,
                            count_include_pad, seed):
    assume(all(p <= k // 2 for p, k in zip(padding, kernel)))
    steps = stride or kernel
    out = [pool_output_size(n, k, s, p, p, ceil_mode)
           for n, k, s, p in zip(hw, kernel, steps, padding)]
    assume(min(out) >= 1)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (batch,) + hw + (channels,))
    args = f"{kernel}, padding = {padding}, ceil_mode = {str(ceil_mode).lower()}"
    if stride is not None:
        args += f", stride = {stride}"
    if average:
        chain = f"avgpool({args}, count_include_pad = {str(count_include_pad).lower()})"

        def pool(tx, tp):
            return F.avg_pool2d(tx, kernel, steps, padding, ceil_mode, count_include_pad)
    else:
        chain = f"maxpool({args})"

        def pool(tx, tp):
            return F.max_pool2d(tx, kernel, steps, padding, ceil_mode=ceil_mode)
    check_layer(chain, x, {}, pool, out + [channels], note=chain)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (6, 6)])
def test_global_avgpool_matches_torch(hw):
    x = np.random.default_rng(1).normal(0.0, 1.0, (2,) + hw + (3,))
    check_layer("global_avgpool", x, {}, lambda tx, tp: tx.mean(dim=(2, 3)), [3])


@pytest.mark.parametrize("padding,ceil_mode,include", [
    (1, True, True), (1, True, False), (0, True, True), (1, False, False)])
def test_pool_windows_hanging_off_the_edge(padding, ceil_mode, include):
    """3×3 windows, stride 2, on 6×6: in ceil mode the last window starts on the last row."""
    x = np.random.default_rng(2).normal(0.0, 1.0, (2, 6, 7, 2))
    flags = f"padding = {padding}, ceil_mode = {str(ceil_mode).lower()}"
    out = [pool_output_size(n, 3, 2, padding, padding, ceil_mode) for n in (6, 7)]
    check_layer(f"avgpool(3, stride = 2, {flags}, count_include_pad = {str(include).lower()})",
                x, {}, lambda tx, tp: F.avg_pool2d(tx, 3, 2, padding, ceil_mode, include),
                out + [2])
    check_layer(f"maxpool(3, stride = 2, {flags})", x, {},
                lambda tx, tp: F.max_pool2d(tx, 3, 2, padding, ceil_mode=ceil_mode), out + [2])


def test_avgpool_textbook_example():
    x = np.array([[0, 1, 2, 4], [5, 6, 6, 8], [3, 2, 1, 0], [1, 2, 3, 4]], dtype=np.float64)
    model = netlang.compile("input x: [4, 4, 1]\noutput y = x -> avgpool(2, stride = 2)\n"
                            "output m = x -> maxpool(2)\n")
    engine = ReferenceEngine(model.graph, dtype=np.float64)
    out = engine.forward({"x": x[None, :, :, None]})
    np.testing.assert_array_equal(out["y"][0, :, :, 0], [[3, 5], [2, 2]])
    np.testing.assert_array_equal(out["m"][0, :, :, 0], [[6, 8], [3, 4]])


# ---- normalisation ---------------------------------------------------------------------------

@FEWER
@given(batch=st.integers(2, 4), spatial=st.sampled_from([(), (3,), (2, 3)]),
       channels=st.integers(1, 4), momentum=st.sampled_from([0.1, 0.5]),
       eps=st.sampled_from([1e-5, 1e-2]), mode=st.sampled_from(["train", "eval"]),
       seed=st.integers(0, 2**16))
def test_batchnorm_matches_torch(batch, spatial, channels, momentum, eps, mode, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, (batch,) + spatial + (channels,))
    params = {"L.weight": rng.normal(1.0, 0.5, (channels,)), "L.bias": rng.normal(0.0, 0.5, (channels,)),
              "L.running_mean": rng.normal(0.0, 0.5, (channels,)),
              "L.running_var": rng.uniform(0.5, 2.0, (channels,))}

    def bn(tx, tp):
        channels_first = tx.transpose(1, 2) if tx.dim() == 3 else tx   # netlang's (N, L, C)
        y = F.batch_norm(channels_first, tp["L.running_mean"].clone(), tp["L.running_var"].clone(),
                         tp["L.weight"], tp["L.bias"], training=mode == "train",
                         momentum=momentum, eps=eps)
        return y.transpose(1, 2) if tx.dim() == 3 else y

    check_layer(f"batchnorm(momentum = {momentum}, eps = {eps})", x, params, bn,
                list(spatial) + [channels], mode=mode, note=f"batchnorm {mode} {x.shape}")


def test_batchnorm_running_statistics_match_torch():
    """Several SGD steps in training mode: parameters, running mean and running variance
    (updated with the unbiased batch variance) track torch.nn.BatchNorm2d; evaluation after."""
    source = ("input x: [4, 5, 3]\ninput t: [4, 5, 3]\n"
              "y = x -> batchnorm(momentum = 0.3, eps = 1e-3) as bn\noutput y\n"
              "train { loss squared_error(y, t)\noptimizer sgd(lr = 0.1) }\n")
    engine = ReferenceEngine(netlang.compile(source).graph, dtype=np.float64)
    module = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.3).double()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    rng = np.random.default_rng(3)
    for step in range(4):
        x = rng.normal(1.0 + step, 2.0, (5, 4, 5, 3))
        t = rng.normal(0.0, 1.0, x.shape)
        loss, outputs = engine.train_step({"x": x, "t": t}, 0.1)
        module.train()
        optimizer.zero_grad()
        y = nhwc(module(nchw(torch.tensor(x))))
        tloss = 0.5 * ((y - torch.tensor(t)) ** 2).sum() / x.shape[0]
        tloss.backward()
        optimizer.step()
        assert rel_error(outputs["y"], y.detach().numpy()) < TOL
        assert rel_error(loss, tloss.item()) < TOL
        for name, value in [("weight", module.weight), ("bias", module.bias),
                            ("running_mean", module.running_mean),
                            ("running_var", module.running_var)]:
            assert rel_error(engine.params[f"bn.{name}"], value.detach().numpy()) < TOL, (step, name)
    module.eval()
    x = rng.normal(0.0, 1.0, (2, 4, 5, 3))
    y = nhwc(module(nchw(torch.tensor(x)))).detach().numpy()
    assert rel_error(engine.forward({"x": x})["y"], y) < TOL


@FEWER
@given(batch=st.integers(1, 2), spatial=st.sampled_from([(3,), (2, 3)]), channels=st.integers(1, 8),
       size=st.integers(1, 6), alpha=st.sampled_from([1e-4, 0.3, 2.0]),
       beta=st.sampled_from([0.5, 0.75, 1.3]), k=st.sampled_from([0.5, 1.0, 2.0]),
       seed=st.integers(0, 2**16))
def test_lrn_matches_torch(batch, spatial, channels, size, alpha, beta, k, seed):
    x = np.random.default_rng(seed).normal(0.0, 1.5, (batch,) + spatial + (channels,))

    def lrn(tx, tp):
        if tx.dim() == 3:
            return F.local_response_norm(tx.transpose(1, 2), size, alpha, beta, k).transpose(1, 2)
        return F.local_response_norm(tx, size, alpha, beta, k)

    check_layer(f"lrn(size = {size}, alpha = {alpha}, beta = {beta}, k = {k})", x, {}, lrn,
                list(spatial) + [channels], note=f"lrn size {size} {x.shape}")


# ---- a small CNN of every op, end to end -----------------------------------------------------

CNN = """
input image: [9, 8, 3]
input label: int[]
h = image
  -> conv2d(4, 3, padding = same, bias = false) as c1 -> batchnorm as bn1 -> relu
  -> maxpool(3, stride = 2, padding = 1, ceil_mode = true)
  -> lrn(size = 3, alpha = 0.5, beta = 0.75, k = 1.0)
  -> conv2d(6, 2, stride = 1, dilation = 2, groups = 2, padding = ((1, 0), (0, 1))) as c2
  -> conv_transpose2d(4, 3, stride = 2, padding = 1, output_padding = 1) as ct
  -> avgpool(2, padding = 1, count_include_pad = false)
  -> global_avgpool
output logits = h -> dense(5) as fc
train { loss cross_entropy(logits, label) }
"""


def test_small_cnn_matches_torch():
    graph = netlang.compile(CNN).graph
    rng = np.random.default_rng(4)
    from netlang.ops.init import initialize
    params = {k: rng.normal(0.0, 0.5, v.shape) if not k.endswith("running_var")
              else rng.uniform(0.5, 1.5, v.shape) for k, v in initialize(graph, 0, np.float64).items()}
    x = rng.normal(0.0, 1.0, (3, 9, 8, 3))
    label = rng.integers(0, 5, 3)
    engine = ReferenceEngine(graph, params={k: v.copy() for k, v in params.items()},
                             dtype=np.float64, input_grads=("image",))
    loss, grads, outputs = engine.gradients({"image": x, "label": label})

    tp = {k: torch.tensor(v, requires_grad=not k.endswith(("running_mean", "running_var")))
          for k, v in params.items()}
    tx = torch.tensor(x, requires_grad=True)
    h = F.conv2d(F.pad(nchw(tx), (1, 1, 1, 1)), tp["c1.weight"])   # no bias before a batchnorm
    h = F.batch_norm(h, tp["bn1.running_mean"].clone(), tp["bn1.running_var"].clone(),
                     tp["bn1.weight"], tp["bn1.bias"], training=True)
    h = F.max_pool2d(torch.relu(h), 3, 2, 1, ceil_mode=True)
    h = F.local_response_norm(h, 3, 0.5, 0.75, 1.0)
    h = F.conv2d(F.pad(h, (0, 1, 1, 0)), tp["c2.weight"], tp["c2.bias"], dilation=2, groups=2)
    h = F.conv_transpose2d(h, tp["ct.weight"], tp["ct.bias"], 2, 1, 1)
    h = F.avg_pool2d(h, 2, 2, 1, count_include_pad=False).mean(dim=(2, 3))
    logits = F.linear(h, tp["fc.weight"], tp["fc.bias"])
    tloss = F.cross_entropy(logits, torch.tensor(label))
    tloss.backward()
    assert rel_error(outputs["logits"], logits.detach().numpy()) < TOL
    assert rel_error(loss, tloss.item()) < TOL
    assert rel_error(grads["image"], tx.grad.numpy()) < TOL
    assert set(engine.trainable) == {k for k, v in tp.items() if v.requires_grad}
    for name in engine.trainable:
        assert rel_error(grads[name], tp[name].grad.numpy()) < TOL, name
