"""Transfer learning (netlang/train/transfer.py): `fit(init=...)` and `netlang train --init`
copy the layers another model's weights hold under the same names and shapes, report the
rest as fresh, keep frozen copies bit-identical, and speak each caller's words in errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli as run

import netlang
from netlang.data import load_dataset
from netlang.errors import UsageError, WeightsError
from netlang.train.transfer import transfer_weights

FEATURES = """
input x: [2]
input label: int32[]
output logits = x -> dense(16) as feat -> relu -> dense(2) as out
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.01)
  batch_size 32
  epochs 3
  data blobs
}
"""

# Another model: `feat` as before, a new layer, and an `out` of another shape.
HEAD = """
input x: [2]
input label: int32[]
output logits = x -> dense(16) as feat -> relu -> dense(8) as hidden -> relu -> dense(2) as out
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.01)
  batch_size 32
  epochs 3
  freeze feat
  data blobs
}
"""



@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    """A run directory of FEATURES trained on blobs, and its final weights."""
    out = tmp_path_factory.mktemp("features") / "run"
    model = netlang.compile(FEATURES)
    model.to("reference")
    model.fit(out=out, verbose=0)
    return out, {name: value.copy() for name, value in model.parameters().items()}


def compiled(source: str, **options) -> netlang.Model:
    model = netlang.compile(source, **options)
    model.to("reference")
    return model


def test_matching_layers_are_copied_and_frozen_ones_stay_bit_identical(features_run, capsys):
    out, trained = features_run
    model = compiled(HEAD)
    drawn = {name: value.copy() for name, value in model.parameters().items()}
    model.fit(init=out)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("initialised from ") and printed[1].endswith(": feat")
    assert printed[2] == ("initialised fresh: hidden (not there), out (`out.weight` is "
                          "(2, 16) there, (2, 8) here)")
    params = model.parameters()
    for name in ("feat.weight", "feat.bias"):   # copied, then frozen: exactly as trained
        np.testing.assert_array_equal(params[name], trained[name])
        assert not np.array_equal(drawn[name], trained[name])
    for name in ("hidden.weight", "out.weight"):   # fresh, then trained
        assert not np.array_equal(params[name], drawn[name])


def test_the_run_records_where_its_weights_started(features_run, tmp_path, capsys):
    out, trained = features_run
    (tmp_path / "head.net").write_text(HEAD)
    code, stdout, err = run(capsys, "train", tmp_path / "head.net", "--init", out,
                            "--init-layers", "feat", "--out", tmp_path / "head",
                            "--device", "reference", "--epochs", "1")
    assert code == 0, err
    assert "initialised from" in stdout and ": feat\n" in stdout
    assert "initialised fresh: hidden, out (not named in --init-layers)" in stdout
    assert "frozen but" not in stdout
    assert json.loads((tmp_path / "head" / "run.json").read_text())["init"].endswith(
        "weights.safetensors")
    head = netlang.load(tmp_path / "head", device="reference")
    np.testing.assert_array_equal(head.parameters()["feat.weight"], trained["feat.weight"])


def test_a_float32_source_fills_a_float64_model(features_run):
    out, trained = features_run
    model = compiled(HEAD, dtype="float64")
    report = transfer_weights(model.graph, model.engine.params, out)
    assert report.copied == ["feat"] and list(report.fresh) == ["hidden", "out"]
    assert model.parameters()["feat.weight"].dtype == np.float64
    np.testing.assert_array_equal(model.parameters()["feat.weight"], trained["feat.weight"])


def test_named_layers_must_fit_and_errors_speak_the_callers_words(features_run, tmp_path,
                                                                   capsys):
    out, _ = features_run
    model = compiled(HEAD)
    with pytest.raises(WeightsError) as info:
        model.fit(init=out, init_layers=["feat", "out"], verbose=0)
    assert info.value.message.endswith(
        "layer `out`, named in `init_layers=`, cannot start from these weights: `out.weight` "
        "is (2, 16) there, (2, 8) here")
    with pytest.raises(UsageError, match=r"names `fet`, .* \(did you mean `feat`\?\)"):
        model.fit(init=out, init_layers="fet", verbose=0)
    with pytest.raises(UsageError, match="pass one of them"):
        model.fit(init=out, resume=True, out=tmp_path / "elsewhere", verbose=0)
    with pytest.raises(UsageError, match="pass `init=` too"):
        model.fit(init_layers=["feat"], verbose=0)
    unrelated = compiled(HEAD.replace("as feat", "as first").replace("freeze feat",
                                                                      "freeze first"))
    with pytest.raises(WeightsError, match="no layer of this model is there"):
        unrelated.fit(init=out, verbose=0)
    hidden_frozen = compiled(HEAD.replace("freeze feat", "freeze feat, hidden"))
    hidden_frozen.fit(init=out, epochs=1)
    assert ("frozen but fresh: hidden (kept at random initial weights)"
            in capsys.readouterr().out.splitlines())

    (tmp_path / "head.net").write_text(HEAD)
    elsewhere = ["--out", tmp_path / "head"]
    for argv, words in [
            (["--init-layers", "feat,out", *elsewhere], "named in --init-layers, cannot"),
            (["--init-layers", "fet", *elsewhere], "--init-layers names `fet`"),
            (["--resume", tmp_path / "elsewhere"], "--init starts a run from"),
            (["--out", out, "--force"], "give the new run another --out")]:
        code, _, err = run(capsys, "train", tmp_path / "head.net", "--init", out, *argv,
                           "--device", "reference")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert words in err and "init_layers=" not in err and "init=" not in err, err


# On MNIST: a feature layer trained on 4,000 digits, then a new head on 100 others.
MNIST_FEATURES = """
input image: [28, 28, 1]
input label: int32[]
output logits = image -> flatten -> dense(64) as features -> relu -> dense(10) as digits
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 2e-3)
  batch_size 64
  epochs 2
}
"""

MNIST_HEAD = """
input image: [28, 28, 1]
input label: int32[]
output logits = image -> flatten -> dense(64) as features -> relu -> dense(10) as head
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 2e-3)
  batch_size 20
  epochs 3
  freeze features
}
"""


def test_a_new_head_on_few_examples_starts_well_ahead_of_training_from_scratch(
        mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_DATA", str(mnist_dir.parent))
    ds = load_dataset("mnist")
    features = compiled(MNIST_FEATURES)
    features.fit(ds.x_train[:4000], ds.y_train[:4000], verbose=0)
    features.save(tmp_path / "features")
    few = slice(10_000, 10_100)
    test = ds.x_test[:2000], ds.y_test[:2000]

    transferred = compiled(MNIST_HEAD)
    ahead = transferred.fit(ds.x_train[few], ds.y_train[few], init=tmp_path / "features",
                            verbose=0)
    scratch = compiled(MNIST_HEAD)   # the same head and examples, every layer trained
    behind = scratch.fit(ds.x_train[few], ds.y_train[few], settings=["freeze=none"], verbose=0)
    assert ahead["loss"][0] < behind["loss"][0] - 0.5          # from the first epoch on
    accuracy = transferred.evaluate(*test)["accuracy"]
    assert accuracy > scratch.evaluate(*test)["accuracy"] + 0.15, accuracy
    np.testing.assert_array_equal(transferred.parameters()["features.weight"],
                                  features.parameters()["features.weight"])


@pytest.mark.parametrize("pair", [("transfer_features.net", "transfer_head.net")])
def test_the_example_pair_shares_its_feature_layers(pair, tmp_path):
    features = netlang.compile(f"examples/{pair[0]}")
    features.to("reference")
    features.save(tmp_path / "features")
    head = netlang.compile(f"examples/{pair[1]}")
    head.to("reference")
    report = transfer_weights(head.graph, head.engine.params, tmp_path / "features")
    assert report.copied == ["conv1", "conv2"] and list(report.fresh) == ["classify"]
    assert set(head.train_config.freeze) == {"conv1", "conv2"}
