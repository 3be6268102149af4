"""Recurrent layers that compute: rnn, lstm and gru forward in time and backward through it.

The reference rules (netlang/ops/recurrent_reference.py) are held against PyTorch's
`nn.RNN`, `nn.LSTM` and `nn.GRU` on identical weights — outputs, and the gradients of every
parameter, the input and the initial states — in float64 and float32, stacked and
bidirectional, returning sequences or final states, with initial states and with lengths
(PyTorch's packed sequences).  Gradients against central differences are test_gradients.py's
cases (the registry walk files them there); here, what those cannot show: padded steps,
dropout between stacked layers, the errors, the reference engine training a model (from
Python and from `netlang train --device reference`), and the CPU engine's training steps
against the reference's.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gradients import check_gradients, random_params

import netlang
from netlang.errors import DataError, NetlangError
from netlang.runtime import make_engine

try:
    import torch
except ImportError:   # the comparisons need PyTorch; everything else runs without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed "
                                                       "(pip install torch==2.13.0)")

STEPS, FEATURES, UNITS, BATCH = 5, 3, 4, 3
# (netlang op and its extra arguments, the torch module and its keyword arguments)
KINDS = {
    "rnn_tanh": ("rnn", "", "RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", ", activation = relu", "RNN", {"nonlinearity": "relu"}),
    "lstm": ("lstm", "", "LSTM", {}),
    "gru": ("gru", "", "GRU", {}),
}
TOLERANCE = {"float64": 1e-6, "float32": 1e-4}


def _model(kind, layers, bidirectional, sequences, *, states=False, lengths=False):
    """A model applying one recurrent layer to `x`, with a squared-error loss on its output;
    `states`: initial states from the inputs `h` (and `c`); `lengths`: from the input `n`."""
    op, extra, _, _ = KINDS[kind]
    directions = 2 if bidirectional else 1
    inputs = [f"input x: [{STEPS}, {FEATURES}]"]
    if states:
        inputs.append(f"input h: [{layers * directions}, {UNITS}]")
        extra += ", h0 = h"
        if op == "lstm":
            inputs.append(f"input c: [{layers * directions}, {UNITS}]")
            extra += ", c0 = c"
    if lengths:
        inputs.append("input n: int32[]")
        extra += ", lengths = n"
    out = [STEPS, UNITS * directions] if sequences else [UNITS * directions]
    inputs.append(f"input t: {out}")
    return netlang.compile(
        "\n".join(inputs) + f"\noutput y = x -> {op}({UNITS}, layers = {layers}, "
        f"bidirectional = {str(bidirectional).lower()}, sequences = {str(sequences).lower()}"
        f"{extra}) as rec\ntrain {{ loss squared_error(y, t) }}\n")


def _feeds(model, rng, dtype, lengths=None):
    feeds = {}
    for name, node in model.graph.graph["inputs"].items():
        shape = (BATCH,) + model.graph.type_of(node).shape[1:]
        feeds[name] = rng.normal(0.0, 1.0, shape).astype(dtype)
    if lengths is not None:
        feeds["n"] = np.asarray(lengths, dtype=np.int32)
    return feeds


def _torch_run(kind, model, params, feeds, layers, bidirectional, sequences, dtype):
    """PyTorch's output, and the gradients of the same squared error, on the same weights."""
    _, _, module_name, options = KINDS[kind]
    torch_dtype = getattr(torch, dtype)
    module = getattr(torch.nn, module_name)(FEATURES, UNITS, num_layers=layers,
                                            bidirectional=bidirectional, batch_first=True,
                                            dtype=torch_dtype, **options)
    with torch.no_grad():
        for name, value in module.named_parameters():
            value.copy_(torch.from_numpy(params[f"rec.{name}"]))
    x = torch.tensor(feeds["x"], requires_grad=True)
    states, leaves = None, {"x": x}
    if "h" in feeds:   # ours are per example (L·D, H); PyTorch's (L·D, B, H)
        leaves["h"] = torch.tensor(feeds["h"], requires_grad=True)
        states = leaves["h"].transpose(0, 1)
        if "c" in feeds:
            leaves["c"] = torch.tensor(feeds["c"], requires_grad=True)
            states = (states, leaves["c"].transpose(0, 1))
    lengths = feeds.get("n")
    read = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor(lengths, dtype=torch.int64), batch_first=True, enforce_sorted=False)
    out, final = module(read, states)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=STEPS)
    final = final[0] if isinstance(final, tuple) else final
    directions = 2 if bidirectional else 1
    y = out if sequences else torch.cat([final[-directions + d] for d in range(directions)], -1)
    loss = 0.5 * ((torch.tensor(feeds["t"]) - y) ** 2).sum() / BATCH
    loss.backward()
    grads = {f"rec.{name}": value.grad.numpy() for name, value in module.named_parameters()}
    grads.update({name: leaf.grad.numpy() for name, leaf in leaves.items()})
    return y.detach().numpy(), loss.item(), grads


def _compare_with_torch(kind, layers, bidirectional, sequences, dtype, *, states=False,
                        lengths=None, seed=0):
    model = _model(kind, layers, bidirectional, sequences, states=states,
                   lengths=lengths is not None)
    rng = np.random.default_rng(seed)
    params = {name: value.astype(dtype) for name, value in random_params(model.graph, rng).items()}
    feeds = _feeds(model, rng, dtype, lengths)
    inputs = [name for name in ("x", "h", "c") if name in feeds]
    engine = make_engine(model.graph, params={k: v.copy() for k, v in params.items()},
                         device="reference", dtype=getattr(np, dtype), input_grads=inputs)
    loss, grads, outputs = engine.gradients(feeds)
    expected_y, expected_loss, expected_grads = _torch_run(kind, model, params, feeds, layers,
                                                           bidirectional, sequences, dtype)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(outputs["y"], expected_y, rtol=tol, atol=tol, err_msg="output")
    np.testing.assert_allclose(engine.forward(feeds)["y"], expected_y, rtol=tol, atol=tol,
                               err_msg="evaluation output")
    assert loss == pytest.approx(expected_loss, rel=tol, abs=tol)
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        assert grads[name].dtype == np.dtype(dtype), name
        np.testing.assert_allclose(grads[name], value, rtol=tol, atol=tol, err_msg=name)


# ---- against PyTorch ---------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch(kind, bidirectional, layers, sequences, dtype):
    _compare_with_torch(kind, layers, bidirectional, sequences, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch_with_initial_states_and_lengths(kind, sequences, dtype):
    """Stacked and bidirectional, initial states from inputs and sequences of 5, 2 and 1
    steps: PyTorch's packed sequences, padded back with zeros; the final states are each
    example's own, in both directions."""
    _compare_with_torch(kind, 2, True, sequences, dtype, states=True, lengths=[5, 2, 1])


# ---- lengths and dropout -----------------------------------------------------------------------

def _reference(model, dtype=np.float64, **options):
    return make_engine(model.graph, device="reference", dtype=dtype, **options)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_padded_steps_change_nothing(kind):
    """What lies past an example's length changes neither its output nor any gradient, and
    receives no gradient; a full length is the same as no lengths at all."""
    model = _model(kind, 2, True, True, lengths=True)
    rng = np.random.default_rng(3)
    params = random_params(model.graph, rng)
    feeds = _feeds(model, rng, np.float64, [5, 3, 0])
    feeds["t"][1, 3:] = feeds["t"][2] = 0.0   # the padded outputs are zeros: no loss there
    engine = _reference(model, params=params, input_grads=["x"])
    loss, grads, outputs = engine.gradients(feeds)
    assert not outputs["y"][1, 3:].any() and not outputs["y"][2].any()
    assert not grads["x"][1, 3:].any() and not grads["x"][2].any()
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["x"][1, 3:] = rng.normal(size=changed["x"][1, 3:].shape)
    changed["x"][2] = 7.0
    loss2, grads2, outputs2 = engine.gradients(changed)
    assert loss2 == loss
    np.testing.assert_array_equal(outputs2["y"], outputs["y"])
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name])
    unpadded = _model(kind, 2, True, True)
    full = {k: v for k, v in feeds.items() if k != "n"}
    with_lengths = engine.forward({**full, "n": np.full(BATCH, STEPS, np.int32)})["y"]
    np.testing.assert_array_equal(with_lengths, _reference(unpadded, params=params).forward(full)["y"])


def test_gradient_checks_with_lengths_and_states_of_every_kind():
    """Central differences (test_gradients.py's checker) of a bidirectional stack with
    initial states, lengths and the last states, for each kind."""
    for kind in KINDS:
        model = _model(kind, 2, True, False, states=True, lengths=True)
        rng = np.random.default_rng(11)
        feeds = _feeds(model, rng, np.float64, [4, 1, 5])
        check_gradients(model.graph, feeds, random_params(model.graph, rng), kind)


DROPOUT = """
input x: [5, 3]
input t: [5, 4]
output y = x -> lstm(4, layers = 3, sequences = true, dropout = 0.5) as rec
train { loss squared_error(y, t) }
"""


def test_dropout_between_layers_acts_in_training_only():
    model = netlang.compile(DROPOUT)
    plain = netlang.compile(DROPOUT.replace(", dropout = 0.5", ""))
    rng = np.random.default_rng(5)
    params = random_params(model.graph, rng)
    feeds = _feeds(model, rng, np.float64)
    engine = _reference(model, params=params)
    np.testing.assert_array_equal(engine.forward(feeds)["y"],
                                  _reference(plain, params=params).forward(feeds)["y"])
    first, second = engine.forward(feeds, mode="train")["y"], engine.forward(feeds, mode="train")["y"]
    assert not np.allclose(first, engine.forward(feeds)["y"])
    assert not np.allclose(first, second)   # a fresh mask each step
    # The training step's backward pass applies the mask its forward pass drew: central
    # differences of the forward graph, masks replayed, agree with it.
    check_gradients(model.graph, feeds, params, "lstm dropout")


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, message", [
    ("input x: [10]\ny = x -> lstm(4) as enc\n",
     "`lstm` expects a (time, features) sequence per example, got (None, 10) from `x`"),
    ("input x: [4, 2, 3]\ny = x -> gru(4) as enc\n", "`gru` expects a (time, features) sequence"),
    ("input x: [5, 3]\ninput n: float32[]\ny = x -> rnn(4, lengths = n) as enc\n",
     "`rnn` expects `lengths` as one integer per example (int32[]), got float32 (None,) from `n`"),
    ("input x: [5, 3]\ninput n: int32[2]\ny = x -> rnn(4, lengths = n) as enc\n",
     "`rnn` expects `lengths` as one integer per example"),
    ("input x: [5, 3]\ninput h: [4]\ny = x -> lstm(4, layers = 2, h0 = h) as enc\n",
     "`lstm` expects `h0` of float32 (2, 4) per example"),
    ("input x: [5, 3]\ny = x -> lstm(4, h0 = 3) as enc\n", "`h0` names a tensor of the model, not 3"),
    ("input x: [5, 3]\ny = x -> gru(4, c0 = x) as enc\n", "`gru` has no argument `c0`"),
])
def test_one_line_errors(source, message):
    with pytest.raises(NetlangError) as error:
        netlang.compile(source)
    assert message in error.value.message
    assert "\n" not in error.value.message


def test_lengths_longer_than_the_sequence_name_the_layer():
    model = _model("gru", 1, False, False, lengths=True)
    feeds = _feeds(model, np.random.default_rng(0), np.float32, [5, 6, 1])
    with pytest.raises(DataError) as error:
        _reference(model, np.float32).forward(feeds)
    assert error.value.message == ("`gru` (layer `rec`): `lengths` holds 6, outside 0..5: the "
                                   "sequences have 5 steps")


def test_a_block_passes_initial_states():
    """An encoder's final state starts a decoder (a block's tensors reach `h0` by name)."""
    model = netlang.compile("""
        block seq2seq(units) {
          input source
          input target
          state = source -> gru(units) as encoder
          output out = target -> gru(units, h0 = state, sequences = true) as decoder
        }
        input x: [5, 3]
        input w: [6, 2]
        output y = (x, w) -> seq2seq(4)
    """)
    decoder = model.graph.node_named("y.decoder")
    assert model.graph.nodes[decoder]["attrs"]["h0"] == "y.encoder"
    feeds = {"x": np.ones((BATCH, 5, 3)), "w": np.ones((BATCH, 6, 2))}
    y = _reference(model).forward(feeds)["y"]
    assert y.shape == (BATCH, 6, 4)


# ---- training, and the engines -----------------------------------------------------------------

SIGN_TASK = """
input x: [6, 2]
input label: int32[]
output z = x -> gru(8) -> dense(2)
train {
  loss cross_entropy(z, label)
  optimizer adam(lr = 0.02)
  batch_size 32
  epochs 4
}
"""


def _sign_task(rng, n):
    """Whether the first feature sums to more than zero over time: a recurrent state must
    carry it along."""
    x = rng.normal(size=(n, 6, 2)).astype(np.float32)
    return x, (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)


def test_the_reference_engine_trains_a_recurrent_model():
    model = netlang.compile(SIGN_TASK)
    engine = make_engine(model.graph, device="reference", seed=0)
    x, label = _sign_task(np.random.default_rng(0), 64)
    losses = [engine.train_step({"x": x, "label": label}, 0.02)[0] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_netlang_train_runs_a_recurrent_model_on_the_reference_engine(tmp_path, capsys):
    from netlang.cli import main  # the command line, driven as a user would
    rng = np.random.default_rng(1)
    x_train, y_train = _sign_task(rng, 256)
    x_test, y_test = _sign_task(rng, 64)
    np.savez(tmp_path / "sign.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)
    (tmp_path / "sign.net").write_text(SIGN_TASK)
    code = main(["train", str(tmp_path / "sign.net"), "--data", str(tmp_path / "sign.npz"),
                 "--device", "reference", "--out", str(tmp_path / "run"), "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference" in out.splitlines()[0]
    assert (tmp_path / "run").is_dir()


# ---- the CPU engine against the reference ---------------------------------------------------
# Each op's kernels, forward and back, are held to the reference by tests/test_conformance.py;
# here whole training runs: several steps of a classifier of each kind and of a character
# model, in float32 (the precision models train in, and the CPU's fast tanh), parameters and
# losses compared after every step.

CLASSIFIER = """
input x: [7, 4]
input n: int32[]
input y: int32[]
output z = x -> %s(6, layers = 2, bidirectional = true, dropout = 0.25, lengths = n%s) as rec
    -> dense(3)
train {
  loss cross_entropy(z, y)
  optimizer adam(lr = 0.01)
}
"""

CHAR_MODEL = """
input tokens: int32[12]
input next: int32[12]
output logits = tokens -> embedding(20, 8) -> lstm(16, sequences = true) as lstm1
    -> dropout(0.2) -> lstm(16, sequences = true) as lstm2 -> dense(20)
train {
  loss cross_entropy(logits, next)
  optimizer adam(lr = 2e-3)
  clip_norm 5
}
"""


def _train_both(model, batches, lr):
    """The reference and CPU engines from one seed, through the same steps: the largest
    relative difference of the losses and of each parameter after each step."""
    reference = make_engine(model.graph, device="reference", seed=3)
    compiled = make_engine(model.graph, device="cpu", seed=3)
    assert compiled.name == "cpu"
    for feeds in batches:
        loss_ref, out_ref = reference.train_step(feeds, lr)
        loss, out = compiled.train_step(feeds, lr)
        assert loss == pytest.approx(loss_ref, rel=1e-5)
        for name in out_ref:
            np.testing.assert_allclose(out[name], out_ref[name], rtol=1e-4, atol=1e-5)
        for name, value in reference.params.items():
            np.testing.assert_allclose(compiled.params[name], value, rtol=1e-4, atol=1e-5,
                                       err_msg=name)


# The LSTM's and GRU's cases compile for 15-20 s on a cold cache, the ReLU RNN's for 8 s: slow
# (.ci/run runs them); the conformance suite's default run checks the layers' training
# against the reference.
@pytest.mark.parametrize("op, extra", [pytest.param("lstm", "", marks=pytest.mark.slow),
                                       pytest.param("gru", "", marks=pytest.mark.slow),
                                       pytest.param("rnn", ", activation = relu",
                                                    marks=pytest.mark.slow), ("rnn", "")])
def test_cpu_training_steps_of_a_classifier_match_the_reference(op, extra):
    """Stacked, bidirectional, with lengths (0 to 7) and dropout between the layers: the masks
    are drawn alike, and the padded steps pass gradients through alike.  75 examples: the CPU
    kernels cut them into blocks of 38 and 37 (recurrent_kernels.py `BLOCK_EXAMPLES`)."""
    model = netlang.compile(CLASSIFIER % (op, extra))
    rng = np.random.default_rng(4)
    batches = [{"x": rng.normal(size=(75, 7, 4)).astype(np.float32),
                "n": rng.integers(0, 8, 75).astype(np.int32), "y": rng.integers(0, 3, 75)}
               for _ in range(3)]
    _train_both(model, batches, 0.01)


def test_cpu_training_steps_of_a_character_model_match_the_reference():
    model = netlang.compile(CHAR_MODEL)
    rng = np.random.default_rng(5)
    # 41 examples: blocks of 21 and 20.
    batches = [{"tokens": rng.integers(0, 20, (41, 12)), "next": rng.integers(0, 20, (41, 12))}
               for _ in range(3)]
    _train_both(model, batches, 2e-3)


def test_the_cpu_engine_refuses_lengths_past_the_sequence_in_one_line():
    model = _model("gru", 1, False, False, lengths=True)
    feeds = _feeds(model, np.random.default_rng(0), np.float32, [5, 6, 1])
    with pytest.raises(DataError) as error:
        make_engine(model.graph, device="cpu").forward(feeds)
    assert error.value.message == "`lengths` holds a value outside 0 to the number of steps"
