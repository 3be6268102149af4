"""Targets beyond class indices, and arrays named after a model's inputs, read from files:
one-hot and probability rows, regression values, and `<input>_train`/`<input>_test` archives
(netlang.data), and how models bind and train on them (netlang.train.prepared_data)."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.data import NamedDataset, load_csv, load_dataset, load_named_npz, load_npz
from netlang.errors import DataError

# Three features; the target is the index of the largest of them.
ONE_HOT_NET = """
input x: [3]
input label: [3]
output logits = x -> dense(3)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.1)
  batch_size 16
  epochs 30
}
"""

# Two regression targets from four features.
REGRESSION_NET = """
input x: [4]
input t: [2]
output y = x -> dense(2)
train {
  loss mse(y, t)
  optimizer adam(lr = 0.1)
  batch_size 16
  epochs 40
}
"""

# One input, two heads: a class and a value.
TWO_HEADS_NET = """
input x: [3]
input label: int32[]
input size: [1]
features = x -> dense(8) -> tanh
output logits = features -> dense(3)
output guess = features -> dense(1)
train {
  loss cross_entropy(logits, label) + 0.5 * mse(guess, size)
  optimizer adam(lr = 0.05)
  batch_size 16
  epochs 30
}
"""


def one_line(function, *args, match: str, **kwargs) -> str:
    """The DataError `function` raises: one line, containing `match`."""
    with pytest.raises(DataError) as info:
        function(*args, **kwargs)
    message = info.value.render()
    assert "\n" not in message and match in message, message
    return message


def reference(source: str) -> netlang.api.Model:
    model = netlang.compile(source)
    model.device = "reference"
    return model


def classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    return x, x.argmax(axis=1)


def regression(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, 4))
    return x, np.stack([x[:, 0] + x[:, 1], x[:, 2] - 2 * x[:, 3]], axis=1)


# ---------------------------------------------------------------- one-hot and probability rows

def test_npz_reads_probability_rows_as_values(tmp_path):
    (x, y), (xt, yt) = classes(40, 0), classes(10, 1)
    soft = 0.7 * np.eye(3)[y] + 0.1
    path = tmp_path / "soft.npz"
    np.savez(path, x_train=x, y_train=soft, x_test=xt, y_test=np.eye(3)[yt])
    _, y_train, _, y_test = load_npz(path, targets="values")
    assert y_train.dtype == np.float32 and y_train.shape == (40, 3)
    np.testing.assert_allclose(y_train, soft, rtol=1e-6)
    ds = load_dataset(str(path), targets="values")
    assert ds.num_classes is None and ds.y_test.shape == (10, 3)
    # Read as labels (the default), the rows are refused with what to change in the model.
    one_line(load_npz, path, match="y_train must be a 1-D array of class indices, got shape "
             "(40, 3); one-hot or probability rows need a model whose target input is float, "
             "e.g. `input label: [3]`")


def test_a_float_target_model_trains_on_one_hot_rows(tmp_path):
    (x, y), (xt, yt) = classes(160, 0), classes(40, 1)
    path = tmp_path / "onehot.npz"
    np.savez(path, x_train=x, y_train=0.8 * np.eye(3)[y] + 0.2 / 3, x_test=xt,
             y_test=np.eye(3)[yt])
    model = reference(ONE_HOT_NET)
    model.fit(data=str(path))
    result = model.evaluate(data=str(path))
    assert result["accuracy"] > 0.85 and result["heads"]["logits"]["accuracy"] > 0.85


def test_csv_reads_target_columns(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("t1,t2,a,b,c\n1,2,0.5,0.25,3\n3,4,1.5,1.25,5\n")
    x, y = load_csv(path, targets="values", target_columns=2)
    assert y.dtype == np.float32 and y.tolist() == [[1, 2], [3, 4]]
    assert x.tolist() == [[0.5, 0.25, 3], [1.5, 1.25, 5]]
    x, y = load_csv(path, targets="values", target_columns=2, label_column=-1)
    assert y.tolist() == [[0.25, 3], [1.25, 5]] and x.tolist() == [[1, 2, 0.5], [3, 4, 1.5]]
    x, y = load_csv(path, targets="values", target_columns=2, label_column="a")
    assert y.tolist() == [[0.5, 0.25], [1.5, 1.25]]
    x, y = load_csv(path, targets="values")
    assert y.shape == (2,) and y.dtype == np.float32 and x.shape == (2, 4)


@pytest.mark.parametrize("text, options, match", [
    ("1,2\n3,4\n", {"target_columns": 2}, "needs 2 target columns and at least one feature "
     "column, found 2 column(s)"),
    ("1,2,3\n3,4,5\n", {"target_columns": 2, "label_column": 2},
     "2 target columns from column 3 do not fit in 3 columns"),
    ("1,nan,3\n3,4,5\n", {"target_columns": 2}, "target columns 1-2 contains a non-finite"),
    ("1,2\n", {"target_columns": 0}, "target_columns must be a positive integer"),
])
def test_csv_target_columns_errors(tmp_path, text, options, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    one_line(load_csv, path, targets="values", match=match, **options)


def test_regression_trains_from_npz_and_csv_and_reports_mse(tmp_path):
    x, t = regression(200, 0)
    npz = tmp_path / "reg.npz"
    np.savez(npz, x_train=x[:160], y_train=t[:160], x_test=x[160:], y_test=t[160:])
    csv = tmp_path / "reg.csv"
    np.savetxt(csv, np.concatenate([t, x], axis=1), delimiter=",")
    for data in (npz, csv):
        model = reference(REGRESSION_NET)
        model.fit(data=str(data))
        result = model.evaluate(data=str(data))
        head = result["heads"]["y"]
        assert head["op"] == "mse" and head["target"] == "t" and "accuracy" not in head
        assert head["mse"] < 0.05 and head["mse"] == pytest.approx(result["loss"], rel=1e-4)


def test_csv_columns_that_do_not_add_up_to_the_model(tmp_path):
    x, t = regression(20, 0)
    path = tmp_path / "narrow.csv"
    np.savetxt(path, np.concatenate([t, x[:, :3]], axis=1), delimiter=",")
    model = reference(REGRESSION_NET)
    with pytest.raises(DataError) as info:
        model.fit(data=str(path))
    assert info.value.render().endswith(
        "narrow.csv: a row has 5 columns: 2 for the target `t` and 3 features, but input `x` "
        "takes 4 values (expected 6 columns)")


# ---------------------------------------------------------------- arrays named after inputs

def save_named(path, **arrays):
    np.savez(path, **arrays)
    return path


def named_arrays(n: int, seed: int, split: str) -> dict:
    x, label = classes(n, seed)
    return {f"x_{split}": x, f"label_{split}": label,
            f"size_{split}": x.max(axis=1, keepdims=True)}


def test_named_npz_reads_the_inputs_it_is_asked_for(tmp_path):
    path = save_named(tmp_path / "named.npz", **named_arrays(8, 0, "train"),
                      **named_arrays(4, 1, "test"), notes_train=np.zeros(3))
    ds = load_named_npz(path, ["x", "label", "size"])
    assert isinstance(ds, NamedDataset) and ds.names == ("x", "label", "size")
    assert ds.train["label"].shape == (8,) and ds.test["size"].shape == (4, 1)
    assert "notes" not in ds.train   # keys of no input are ignored
    assert load_dataset(str(path), inputs=("x", "label", "size")).names == ("x", "label", "size")
    message = one_line(load_named_npz, path, ["x", "label", "size", "extra"],
                       match="missing extra_train, extra_test")
    assert "each of its inputs (x, label, size, extra)" in message
    assert "found: x_train, label_train, size_train, x_test" in message


def test_named_npz_without_names_reads_every_pair(tmp_path):
    path = save_named(tmp_path / "pairs.npz", **named_arrays(8, 0, "train"),
                      **named_arrays(4, 1, "test"))
    ds = load_dataset(str(path))
    assert isinstance(ds, NamedDataset) and set(ds.names) == {"x", "label", "size"}
    assert "NamedDataset(name='pairs', x=(8, 3)/(4, 3)" in repr(ds)


@pytest.mark.parametrize("change, match", [
    ({"x_test": np.zeros((4, 5))}, "x_train samples have shape (3,) but x_test samples have "
     "shape (5,)"),
    ({"label_train": np.zeros(7, int)}, "label_train has 7 samples but x_train has 8"),
    ({"size_test": None}, "size_train without its counterpart"),
    ({"x_train": np.array([["a"] * 3] * 8)}, "x_train must hold numbers"),
    ({"x_train": np.full((8, 3), np.inf)}, "x_train contains a non-finite value"),
    ({"label_test": np.zeros((0,), int), "x_test": np.zeros((0, 3)),
      "size_test": np.zeros((0, 1))}, "the test set is empty"),
])
def test_named_npz_errors_name_the_arrays(tmp_path, change, match):
    arrays = {**named_arrays(8, 0, "train"), **named_arrays(4, 1, "test"), **change}
    path = save_named(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    one_line(load_dataset, str(path), match=match)


def test_a_model_with_two_heads_trains_on_named_arrays(tmp_path):
    path = save_named(tmp_path / "heads.npz", **named_arrays(160, 0, "train"),
                      **named_arrays(40, 1, "test"))
    model = reference(TWO_HEADS_NET)
    model.fit(data=str(path))
    result = model.evaluate(data=str(path))
    logits, guess = result["heads"]["logits"], result["heads"]["guess"]
    assert (logits["op"], logits["target"], logits["weight"]) == ("cross_entropy", "label", 1.0)
    assert (guess["op"], guess["target"], guess["weight"]) == ("mse", "size", 0.5)
    assert logits["accuracy"] == result["accuracy"] > 0.8 and "mse" not in logits
    assert guess["mse"] < 0.2 and "accuracy" not in guess
    assert result["loss"] == pytest.approx(logits["loss"] + 0.5 * guess["loss"], rel=1e-4)
    # A NamedDataset from Python works the same way, and labels out of range are refused.
    ds = load_named_npz(path)
    assert model.evaluate(data=ds)["examples"] == 40
    bad = NamedDataset({**ds.train, "label": ds.train["label"] + 3}, ds.test, "bad")
    with pytest.raises(DataError) as info:
        model.evaluate(data=bad)
    assert "bad (train): `label` labels: label 5 at index 0 is out of range (expected 0..2)" \
        in info.value.render()


def test_named_arrays_that_do_not_fit_the_model(tmp_path):
    arrays = {**named_arrays(8, 0, "train"), **named_arrays(4, 1, "test")}
    model = reference(TWO_HEADS_NET)
    wide = save_named(tmp_path / "wide.npz", **{**arrays, "x_train": np.zeros((8, 4)),
                                                "x_test": np.zeros((4, 4))})
    with pytest.raises(DataError) as info:
        model.fit(data=str(wide))
    assert "wide: x_train: `x` samples have shape 4 (4 values) but the model input is 3" in \
        info.value.render()
    hot = save_named(tmp_path / "hot.npz", **{**arrays, "label_train": np.eye(3)[[0] * 8],
                                               "label_test": np.eye(3)[[0] * 4]})
    with pytest.raises(DataError) as info:
        model.fit(data=str(hot))
    assert "input `label` takes one value per example, got shape (8, 3) (one-hot or " \
           "probability rows need a float input, e.g. `input label: [3]`)" in info.value.render()
    plain = tmp_path / "plain.npz"
    np.savez(plain, x_train=arrays["x_train"], y_train=arrays["label_train"],
             x_test=arrays["x_test"], y_test=arrays["label_test"])
    with pytest.raises(DataError) as info:
        model.fit(data=str(plain))
    assert info.value.render().endswith(
        "plain holds one input array and one label array, but this model has several target "
        "inputs (`label`, `size`): use an .npz that holds <input>_train and <input>_test for "
        "each of its inputs (x, label, size)")
