"""ONNX import (`netlang import`, `netlang.import_onnx`): netlang's exports read back (export →
import → export again gives the same outputs in ONNX Runtime, and the imported .net file with
its weights gives the original model's), a graph built by hand in ONNX's own layout, the
refusals, and the command.  Skipped where `onnx` or `onnxruntime` is not installed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import run_cli
from test_onnx import EXAMPLES, OP_CASES, assert_close, draw_inputs, randomise_buffers

import netlang
from netlang.frontend.format import format_source
from netlang.interchange import ImportRefused

onnx = pytest.importorskip("onnx", reason="ONNX import needs the onnx package (netlang[onnx])")
ort = pytest.importorskip("onnxruntime", reason="the round trips are checked by onnxruntime")
helper, TensorProto, numpy_helper = onnx.helper, onnx.TensorProto, onnx.numpy_helper


def run_onnx(path, feeds: dict) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def round_trip(model, tmp_path, batch: int = 2, opset: int = 17) -> str:
    """Exports `model`, imports the file (weights as a run directory), loads the run back
    through the .net file, and exports that: checks both ONNX files give the same outputs and
    the imported model netlang's original ones.  Returns the imported source."""
    first = model.export(tmp_path / "first.onnx", batch=batch, opset=opset)
    netlang.import_onnx(first, tmp_path / "imported.net", weights_out=tmp_path / "run")
    imported = netlang.load(tmp_path / "imported.net", weights=tmp_path / "run",
                            device="reference")
    feeds = draw_inputs(model, batch)
    session = ort.InferenceSession(first, providers=["CPUExecutionProvider"])
    read = {i.name: feeds[i.name] for i in session.get_inputs()}
    assert_close(imported.forward(read), model.forward(read))
    second = imported.export(tmp_path / "second.onnx", batch=batch)
    assert_close(run_onnx(second, read), run_onnx(first, read))
    source = (tmp_path / "imported.net").read_text()
    assert format_source(source) == source   # canonical: `netlang fmt --check` passes
    return source


@pytest.mark.parametrize("name, batch", EXAMPLES)
def test_an_exported_example_round_trips(name, batch, tmp_path):
    model = netlang.compile(f"examples/{name}.net").to("reference")
    randomise_buffers(model)
    round_trip(model, tmp_path, batch)


# The op cases of test_onnx.py whose export netlang reads back (all of an op's cases, or those
# listed); the others are refused, each in one line naming an ONNX op type and node (below).
IMPORTED_CASES = {op: None for op in [
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "silu", "softmax", "log_softmax",
    "maxout", "conv2d", "conv_transpose2d", "dense", "embedding", "exp", "log", "sqrt", "square",
    "abs", "softplus", "clip", "pow", "stop_gradient", "subtract", "divide", "add_scalar",
    "rdivide_scalar", "scale", "concat", "add", "multiply", "batchnorm", "lrn", "dropout",
    "gaussian_noise", "masking_noise", "maxpool", "avgpool", "global_avgpool", "sum", "mean",
    "max", "slice", "flatten", "reshape", "permute", "transpose"]}
IMPORTED_CASES.update({"gelu": [1], "rnn": [0, 1], "lstm": [1]})   # gelu's Erf form; lengths
REFUSED_CASES = [(op, i) for op, cases in OP_CASES.items() for i in range(len(cases))
                 if op not in IMPORTED_CASES or (IMPORTED_CASES[op] is not None
                                                 and i not in IMPORTED_CASES[op])]


@pytest.mark.parametrize("source", [pytest.param(OP_CASES[op][i], id=f"{op}-{i}")
                                    for op, indices in IMPORTED_CASES.items()
                                    for i in (indices or range(len(OP_CASES[op])))])
def test_an_exported_op_round_trips(source, tmp_path):
    model = netlang.compile(source).to("reference")
    randomise_buffers(model)
    round_trip(model, tmp_path)


@pytest.mark.parametrize("op, index", REFUSED_CASES)
def test_an_export_netlang_cannot_read_is_refused_in_one_line(op, index, tmp_path):
    path = netlang.compile(OP_CASES[op][index]).to("reference").export(tmp_path / "m.onnx")
    with pytest.raises(ImportRefused) as error:
        netlang.import_onnx(path, tmp_path / "m.net")
    assert str(error.value).startswith("error: ONNX `") and "\n" not in str(error.value)


def test_the_refused_cases_are_the_ones_documented():
    assert sorted({op for op, _ in REFUSED_CASES}) == ["broadcast_to", "gelu", "gru", "lstm",
                                                       "rnn", "sign", "threshold"]


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reductions_read_at_both_ends_of_the_opset_range(op, opset, tmp_path):
    # Their axes are an attribute before opset 18 (13 for ReduceSum), an input from it.
    round_trip(netlang.compile(OP_CASES[op][0]).to("reference"), tmp_path, opset=opset)


@pytest.mark.parametrize("layer", ["rnn(5, activation = relu, sequences = true)",
                                   "gru(4, bidirectional = true, sequences = true)",
                                   "gru(4, layers = 2)",
                                   "lstm(3, bidirectional = true, layers = 2, sequences = true)"])
def test_recurrent_layers_round_trip_with_their_gates_in_order(layer, tmp_path):
    model = netlang.compile(f"input x: [6, 3]\noutput y = x -> {layer} as rec -> dense(2)")
    round_trip(model.to("reference"), tmp_path)


def test_a_softmax_across_channels_left_first_reads_its_axis(tmp_path):
    # The ONNX tensor is channels first after the Conv: the Softmax's axis 1 is netlang's -1.
    source = round_trip(netlang.compile(
        "input x: [5, 4, 2]\noutput y = x -> conv2d(3, 1) as c -> softmax").to("reference"),
        tmp_path)
    assert "softmax\n" in source and "permute" not in source


def pytorch_style_graph() -> tuple:
    """A small CNN as PyTorch writes it: an NCHW input, dotted and colon names, Gemm with an
    untransposed weight and alpha, a BatchNormalization and a channel-first Flatten."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    initializers = [init("features.0.weight", 4, 3, 3, 3), init("features.0.bias", 4),
                    init("bn.weight", 4), init("bn.bias", 4), init("bn.running_mean", 4),
                    numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32),
                                            "bn.running_var"),
                    init("classifier.weight", 4 * 3 * 3, 5), init("classifier.bias", 5)]
    nodes = [
        helper.make_node("Conv", ["input.1", "features.0.weight", "features.0.bias"], ["c"],
                         name="/features/0/Conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="/features/1/Relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="/features/2/MaxPool",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["p", "bn.weight", "bn.bias", "bn.running_mean",
                                                "bn.running_var"], ["b"], name="/bn/BN",
                         epsilon=1e-3),
        helper.make_node("Flatten", ["b"], ["f"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["f", "classifier.weight", "classifier.bias"], ["g"],
                         name="/classifier/Gemm", alpha=0.5),
        helper.make_node("Softmax", ["g"], ["prob:0"], name="/Softmax", axis=1)]
    graph = helper.make_graph(
        nodes, "torch_jit", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                           ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("prob:0", TensorProto.FLOAT, ["N", 5])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_in_onnxs_own_layout_is_read_channels_last(tmp_path):
    path = tmp_path / "torch.onnx"
    onnx.save(pytorch_style_graph(), path)
    model = netlang.import_onnx(path, tmp_path / "m.net")
    source = (tmp_path / "m.net").read_text()
    assert "input input_1: [6, 6, 3]" in source
    assert "input `input.1` is `input_1`" in source and "output `prob:0` is `prob_0`" in source
    assert "as features_0" in source and "as bn" in source and "as classifier" in source
    # The flatten reads channels first, as ONNX's does: one permute before it.
    assert "-> permute((2, 0, 1))\n  -> flatten" in source and source.count("permute") == 1
    images = np.random.default_rng(1).standard_normal((3, 3, 6, 6)).astype(np.float32)
    want = run_onnx(path, {"input.1": images})["prob:0"]
    got = model.to("reference").forward({"input_1": images.transpose(0, 2, 3, 1)})["prob_0"]
    assert_close({"p": got}, {"p": want})


def one_node_graph(node, inputs, outputs, initializers=()):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_op_without_a_netlang_form_is_refused_by_type_and_node(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    path = tmp_path / "m.onnx"
    onnx.save(one_node_graph(helper.make_node("Erf", ["x"], ["y"], name="erf_7"), [x], [y]),
              path)
    with pytest.raises(ImportRefused) as error:
        netlang.import_onnx(path, tmp_path / "m.net")
    assert str(error.value) == "error: ONNX `Erf` node `erf_7` has no netlang form"
    assert not (tmp_path / "m.net").exists()


def test_a_use_netlang_cannot_express_is_refused_saying_why(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1])
    path = tmp_path / "m.onnx"
    onnx.save(one_node_graph(helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=1),
                             [x], [y], [numpy_helper.from_array(np.ones((1, 1), np.float32),
                                                                "w")]), path)
    with pytest.raises(ImportRefused, match=r"^error: ONNX `Gemm` node `fc` cannot be imported: "
                                            r"transA = 1"):
        netlang.import_onnx(path, tmp_path / "m.net")


def test_a_dynamic_batch_export_reads_back(tmp_path):
    model = netlang.compile("examples/lenet5.net").to("reference")
    path = model.export(tmp_path / "m.onnx", dynamic_batch=True)
    imported = netlang.import_onnx(path, tmp_path / "m.net").to("reference")
    images = np.random.default_rng(0).standard_normal((3, 28, 28, 1)).astype(np.float32)
    assert_close(imported.forward({"image": images}), model.forward({"image": images}))


def test_a_layout_that_moves_the_batch_axis_is_refused_by_name(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 4])
    path = tmp_path / "m.onnx"
    onnx.save(one_node_graph(helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2]),
                             [x], [y]), path)
    with pytest.raises(ImportRefused, match=r"^error: ONNX output `y` is not batch first$"):
        netlang.import_onnx(path, tmp_path / "m.net")


def test_a_malformed_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xff")
    code, out, err = run_cli(capsys, "import", path, "-o", tmp_path / "m.net")
    assert code == 2 and err.startswith(f"error: {path}: not an ONNX model")
    assert len(err.strip().splitlines()) == 1


def test_paths_that_cannot_be_read_or_written_are_one_line_before_anything_is_written(
        tmp_path, capsys):
    netlang.compile("examples/mlp.net").to("reference").export(tmp_path / "mlp.onnx")
    (tmp_path / "folder").mkdir()
    for argv, expected in [
            (["-o", tmp_path / "folder", "--force"],
             f"error: {tmp_path / 'folder'}: a folder, not a .net file to write"),
            (["-o", tmp_path / "missing" / "m.net"],
             f"error: {tmp_path / 'missing'}: no such folder to write m.net in"),
            (["-o", tmp_path / "m.net", "--weights-out", tmp_path / "missing" / "w.safetensors"],
             f"error: {tmp_path / 'missing'}: no such folder to write w.safetensors in")]:
        code, out, err = run_cli(capsys, "import", tmp_path / "mlp.onnx", *argv)
        assert (code, err.strip()) == (2, expected)
        assert not (tmp_path / "m.net").exists() and not (tmp_path / "missing").exists()
    code, out, err = run_cli(capsys, "import", tmp_path / "folder", "-o", tmp_path / "m.net")
    assert (code, err.strip()) == (2, f"error: {tmp_path / 'folder'}: a folder, not an ONNX file")


def test_evaluating_an_imported_model_without_a_loss_says_what_to_add(tmp_path, capsys):
    # ONNX holds the inference pass only: the .net file written has no loss to score against.
    netlang.compile("examples/mlp.net").to("reference").export(tmp_path / "mlp.onnx")
    model = netlang.import_onnx(tmp_path / "mlp.onnx", tmp_path / "m.net",
                                weights_out=tmp_path / "run", device="reference")
    expected = f"{tmp_path / 'm.net'}: this model has no loss to evaluate: declare its target"
    with pytest.raises(netlang.NetlangError, match=expected):
        model.evaluate(data="mnist")
    code, out, err = run_cli(capsys, "eval", tmp_path / "m.net", "--weights", tmp_path / "run",
                             "--data", "mnist", "--device", "reference")
    assert code == 2 and err.startswith(f"error: {expected}") and "--force" in err
    assert len(err.strip().splitlines()) == 1 and out == ""
    # predict prints its outputs whole, and says so when asked for the top classes.
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28, 1), dtype=np.float32))
    code, out, err = run_cli(capsys, "predict", tmp_path / "m.net", "--weights", tmp_path / "run",
                             tmp_path / "x.npy", "--top-k", "2", "--device", "reference")
    assert (code, err) == (2, "error: --top-k lists classes, and this model has no "
                              "classification loss: its outputs are printed whole\n")


def test_weights_imported_over_a_training_run_are_the_ones_loaded(tmp_path):
    # A run directory's checkpoints load before its weights.safetensors: --force must replace
    # the old run, not leave its last checkpoint to shadow the imported weights.
    (tmp_path / "xor.net").write_text(open("examples/xor.net").read())
    trained = netlang.compile(str(tmp_path / "xor.net")).to("reference")
    trained.fit(out=tmp_path / "run", epochs=1, verbose=0)
    fresh = netlang.compile("examples/xor.net").to("reference")
    fresh.export(tmp_path / "xor.onnx")
    netlang.import_onnx(tmp_path / "xor.onnx", tmp_path / "m.net", weights_out=tmp_path / "run",
                        force=True)
    assert not list((tmp_path / "run").glob("ckpt-*"))
    loaded = netlang.load(tmp_path / "m.net", weights=tmp_path / "run", device="reference")
    x = {"x": np.array([[0, 1], [1, 1]], dtype=np.float32)}
    assert_close(loaded.forward(x), fresh.forward(x))


def test_an_invalid_graph_is_one_line(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    path = tmp_path / "m.onnx"   # reads a tensor nothing computes
    onnx.save(one_node_graph(helper.make_node("Relu", ["nowhere"], ["y"]), [x], [y]), path)
    code, out, err = run_cli(capsys, "import", path, "-o", tmp_path / "m.net")
    assert code == 2 and err.startswith(f"error: {path}: not a valid ONNX model:")
    assert len(err.strip().splitlines()) == 1


def test_the_import_command_writes_a_file_check_and_fmt_accept(tmp_path, capsys):
    model = netlang.compile("examples/lenet5.net").to("reference")
    model.export(tmp_path / "lenet5.onnx")
    code, out, err = run_cli(capsys, "import", tmp_path / "lenet5.onnx", "-o",
                             tmp_path / "lenet5.net", "--weights-out", tmp_path / "run")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'lenet5.net'} (1 output, 61,706 weights")
    assert run_cli(capsys, "check", tmp_path / "lenet5.net")[0] == 0
    assert run_cli(capsys, "fmt", "--check", tmp_path / "lenet5.net")[0] == 0
    # The run directory is what --weights takes; written again only with --force.
    code, out, err = run_cli(capsys, "export", tmp_path / "lenet5.net", "--weights",
                             tmp_path / "run", "-o", tmp_path / "again.onnx")
    assert code == 0, err
    code, out, err = run_cli(capsys, "import", tmp_path / "lenet5.onnx", "-o",
                             tmp_path / "lenet5.net")
    assert code == 2 and "exists: --force overwrites it" in err
    assert run_cli(capsys, "import", tmp_path / "lenet5.onnx", "-o", tmp_path / "lenet5.net",
                   "--force")[0] == 0


def torch_cases():
    """Small PyTorch modules (built here when torch is installed) and an input for each."""
    torch = pytest.importorskip("torch", reason="PyTorch's own export is read where installed")
    nn = torch.nn
    torch.manual_seed(0)

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 2))
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return torch.softmax(self.head(torch.flatten(pooled, 1)), dim=1)

    class Recurrent(nn.Module):
        def __init__(self, kind, **options):
            super().__init__()
            self.rnn = getattr(nn, kind)(4, 6, batch_first=True, **options)
            self.fc = nn.Linear(12 if options.get("bidirectional") else 6, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0])

    sequence = torch.randn(2, 7, 4)
    return torch, {"cnn": (Cnn(), torch.randn(2, 3, 12, 12)),
                   "lstm": (Recurrent("LSTM"), sequence),
                   "gru_bidirectional": (Recurrent("GRU", bidirectional=True), sequence),
                   "rnn_stacked": (Recurrent("RNN", num_layers=2), sequence),
                   "lstm_stacked_bidirectional": (Recurrent("LSTM", num_layers=2,
                                                            bidirectional=True), sequence)}


@pytest.mark.parametrize("name", ["cnn", "lstm", "gru_bidirectional", "rnn_stacked",
                                  "lstm_stacked_bidirectional"])
def test_pytorchs_own_export_is_read(name, tmp_path):
    # PyTorch folds batch norm into the convolution, names layers by module (`/rnn/LSTM`),
    # writes zero initial states as an Expand to the batch, and reads Y through a Squeeze.
    torch, cases = torch_cases()
    module, x = cases[name]
    module.eval()
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    model = netlang.import_onnx(path, tmp_path / "m.net").to("reference")
    images = x.numpy().transpose(0, 2, 3, 1) if x.dim() == 4 else x.numpy()
    with torch.no_grad():
        want = module(x).numpy()
    assert_close({"y": model.forward({"x": images})["y"]}, {"y": want})
