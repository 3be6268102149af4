"""Tests of netlang.data: loaders, synthetic sets, helpers, and every bad-input path.

No test reaches the network: `urllib.request.urlopen` is replaced for all of them,
and the download tests serve bytes from a fake `fetch`.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from netlang.data import (
    Dataset,
    batches,
    blobs,
    check_labels,
    first_element,
    fit_to_shape,
    load_csv,
    load_dataset,
    load_mnist,
    load_npz,
    mnist,
    normalize,
    parse_idx,
    read_idx,
    spirals,
    validation_split,
    xor,
)
from netlang.errors import DataError


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No test may download, and none may see the developer's own data or cache."""
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("NETLANG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def raises_one_line(func, *args, match: str = "", **kwargs) -> str:
    """Call `func`, expect a DataError whose message is one line and contains `match`."""
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    message = info.value.message
    assert "\n" not in message and "\n" not in str(info.value), message
    assert match.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------- synthetic sets

@pytest.mark.parametrize("make", [blobs, spirals, lambda seed: xor(3, noise=0.1, seed=seed)])
def test_synthetic_is_deterministic_per_seed(make):
    x1, y1 = make(seed=7)
    x2, y2 = make(seed=7)
    x3, _ = make(seed=8)
    assert x1.dtype == np.float32 and y1.dtype == np.int64
    assert x1.ndim == 2 and x1.shape[1] == 2 and len(x1) == len(y1)
    assert x1.tobytes() == x2.tobytes() and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_first_element_labels_the_first_symbol_and_pads_after_each_length():
    x, lengths, y = first_element(300, steps=20, classes=3, seed=4)
    assert x.shape == (300, 20, 4) and x.dtype == np.float32
    assert lengths.dtype == np.int32 and y.dtype == np.int64
    assert (x[:, 0, :3].argmax(axis=1) == y).all() and (x[:, 0, 3] == 1).all()
    steps = np.arange(20)[None, :]
    inside = steps < lengths[:, None]
    assert (x.sum(axis=2) == np.where(inside, np.where(steps == 0, 2, 1), 0)).all()
    assert (x[:, 1:, 3] == 0).all()   # only the first step carries the start mark
    assert set(lengths) == set(range(1, 21)) and set(y) == {0, 1, 2}
    # The symbols after the first are noise: they do not follow the label.
    later = x[:, 1:, :3].argmax(axis=2)[inside[:, 1:]]
    assert 0.25 < (later == np.repeat(y, lengths - 1)).mean() < 0.42
    again = first_element(300, steps=20, classes=3, seed=4)
    assert all(a.tobytes() == b.tobytes() for a, b in zip((x, lengths, y), again))
    assert (first_element(50, steps=20, shortest=20)[1] == 20).all()
    raises_one_line(first_element, 5, steps=10, shortest=11, match="shortest must be at most")


def test_first_element_by_name_tests_on_full_length_sequences():
    ds = load_dataset("first_element", samples=100, seed=2)
    assert ds.names == ("sequence", "length", "label")
    assert len(ds.train["label"]) == 80 and len(ds.test["label"]) == 20
    assert ds.train["sequence"].shape[1:] == (100, 5)
    assert (ds.test["length"] == 100).all() and ds.train["length"].min() < 100


def test_xor_is_the_truth_table():
    x, y = xor()
    assert x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert y.tolist() == [0, 1, 1, 0]
    x5, y5 = xor(5)
    assert x5.shape == (20, 2) and y5.tolist() == [0, 1, 1, 0] * 5


@pytest.mark.parametrize("seed", range(10))
def test_blobs_are_linearly_separable_and_balanced(seed):
    x, y = blobs(301, noise=2.0, seed=seed)  # large noise: the clipping must still separate
    assert np.array_equal((x[:, 0] + x[:, 1] > 0).astype(np.int64), y)
    assert abs(int(y.sum()) - 150) <= 1


def test_spirals_are_balanced_bounded_and_not_linearly_separable():
    x, y = spirals(400, seed=0)
    assert y.sum() == 200
    assert np.abs(x).max() < 1.5
    # The best least-squares linear classifier stays near chance.
    design = np.hstack([x, np.ones((len(x), 1))])
    w, *_ = np.linalg.lstsq(design, 2.0 * y - 1, rcond=None)
    accuracy = ((design @ w > 0) == y).mean()
    assert accuracy < 0.75


@pytest.mark.parametrize("call, match", [
    (lambda: blobs(1), "n must be"), (lambda: spirals(0), "n must be"),
    (lambda: xor(0), "repeat"), (lambda: blobs(10, noise=-1.0), "noise"),
    (lambda: spirals(10, noise=float("nan")), "noise"), (lambda: spirals(10, turns=0), "turns"),
])
def test_synthetic_rejects_bad_arguments(call, match):
    raises_one_line(call, match=match)


def test_load_dataset_synthetic_splits():
    ds = load_dataset("blobs", seed=3)
    assert (len(ds.x_train), len(ds.x_test)) == (160, 40) and ds.num_classes == 2
    assert ds.input_shape == (2,) and ds.x_train.dtype == np.float32
    again = load_dataset("blobs", seed=3)
    assert np.array_equal(ds.x_train, again.x_train) and np.array_equal(ds.y_test, again.y_test)
    assert not np.array_equal(ds.x_train, load_dataset("blobs", seed=4).x_train)
    assert len(load_dataset("spirals", samples=100, test_fraction=0.5).x_test) == 50
    xor_ds = load_dataset("XOR", samples=10)
    assert len(xor_ds.x_train) == 12 and xor_ds.y_test.tolist() == [0, 1, 1, 0]


def test_load_dataset_rejects_unknown_specs(tmp_path):
    message = raises_one_line(load_dataset, "spirls", match="unknown data set `spirls`")
    assert "did you mean `spirals`" in message
    raises_one_line(load_dataset, "  ", match="empty")
    other = tmp_path / "data.txt"
    other.write_text("1,2\n")
    raises_one_line(load_dataset, str(other), match="unsupported data file type `.txt`")
    raises_one_line(load_dataset, "blobs", samples=0, match="samples")
    raises_one_line(load_dataset, "blobs", test_fraction=1.0, match="test_fraction")
    raises_one_line(load_dataset, "blobs", num_classes=0, match="num_classes")


def test_load_dataset_checks_labels_against_num_classes():
    assert load_dataset("xor", num_classes=3).num_classes == 3
    raises_one_line(load_dataset, "xor", num_classes=1, match="out of range (expected 0..0)")


# ---------------------------------------------------------------- .npz files

def save_npz(path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 0, 1, 2]),
        "x_test": rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8),
        "y_test": np.array([2, 1, 0]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_happy_path(tmp_path):
    path = save_npz(tmp_path / "digits.npz")
    x_train, y_train, x_test, y_test = load_npz(path)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    ds = load_dataset(str(path))
    assert ds.name == "digits" and ds.num_classes == 3 and ds.input_shape == (4, 4, 1)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    np.testing.assert_allclose(ds.x_test * 255, x_test)
    floats = save_npz(tmp_path / "f.npz", x_train=np.full((6, 3), 7.5), x_test=np.ones((3, 3)))
    assert load_dataset(str(floats)).x_train.max() == 7.5  # floats are kept, not scaled


@pytest.mark.parametrize("overrides, match", [
    ({"y_test": None}, "missing key(s) y_test"),
    ({"x_train": np.arange(6.0)}, "x_train must have shape (samples, features...)"),
    ({"y_train": np.zeros((6, 3))}, "y_train must be a 1-D array"),
    ({"y_train": np.array([0, 1, 2])}, "x_train has 6 samples but y_train has 3"),
    ({"x_test": np.zeros((3, 5, 5, 1), np.uint8)}, "x_test samples have shape (5, 5, 1)"),
    ({"x_train": np.full((6, 2), np.nan)}, "non-finite value (nan)"),
    ({"x_test": np.array([[1.0, np.inf]] * 3), "x_train": np.ones((6, 2))}, "non-finite"),
    ({"x_train": np.array([["a", "b"]] * 6)}, "must hold numbers"),
    ({"y_train": np.array([0, 1, 2.5, 0, 1, 2])}, "label 2.5 at index 2 is not an integer"),
    ({"y_test": np.array([0, -1, 1])}, "label -1 at index 1 is out of range"),
    ({"x_train": np.zeros((0, 4, 4, 1), np.uint8), "y_train": np.zeros(0, int)},
     "train set is empty"),
])
def test_npz_rejects_bad_contents(tmp_path, overrides, match):
    path = save_npz(tmp_path / "bad.npz", **overrides)
    raises_one_line(load_npz, path, match=match)
    raises_one_line(load_dataset, str(path), match=match)


def test_npz_rejects_bad_files(tmp_path):
    raises_one_line(load_npz, tmp_path / "absent.npz", match="file not found")
    (tmp_path / "dir.npz").mkdir()
    raises_one_line(load_npz, tmp_path / "dir.npz", match="not a regular file")
    text = tmp_path / "text.npz"
    text.write_text("hello, not a zip\n")
    raises_one_line(load_npz, text, match="not a readable .npz archive")
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros(3))
    raises_one_line(load_npz, single, match="single array")
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros((1, 1)), y_test=np.zeros(1))
    raises_one_line(load_npz, objects, match="object array")
    good = save_npz(tmp_path / "good.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    raises_one_line(load_npz, truncated, match="truncated.npz")


# ---------------------------------------------------------------- CSV files

def test_csv_with_detected_header(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("\ufefflabel,a,b\n# a comment\n1,0.5,2\n\n0,-1.5,3\n1, 2 ,4\n")
    x, y = load_csv(path)
    assert x.dtype == np.float32 and x.tolist() == [[0.5, 2], [-1.5, 3], [2, 4]]
    assert y.dtype == np.int64 and y.tolist() == [1, 0, 1]
    x2, y2 = load_csv(path, label_column="b")
    assert y2.tolist() == [2, 3, 4] and x2[:, 0].tolist() == [1, 0, 1]


def test_csv_without_header_and_label_column(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("".join(f"{i}.0,{i * 2},{i % 3}\n" for i in range(10)))
    x, y = load_csv(path, label_column=-1)
    assert x.shape == (10, 2) and y.tolist() == [i % 3 for i in range(10)]
    ds = load_dataset(str(path), label_column=2, test_fraction=0.3, seed=1)
    assert (len(ds.x_train), len(ds.x_test), ds.num_classes) == (7, 3, 3)
    assert ds.name == "plain"
    numeric_header = tmp_path / "numeric_header.csv"
    numeric_header.write_text("0,1,2\n1,2,3\n0,4,5\n")
    assert len(load_csv(numeric_header, header=True)[0]) == 2


@pytest.mark.parametrize("text, options, match", [
    ("", {}, "no data rows"),
    ("# only a comment\n\n", {}, "no data rows"),
    ("label,a\n", {}, "header row but no data rows"),
    ("0,1\n1,oops\n", {}, "bad.csv:2: column 2: cannot read 'oops' as a number"),
    ("0,1,2\n1,2\n", {}, "bad.csv:2: expected 3 columns like the first row, found 2"),
    ("0,1\n1,,\n", {}, "bad.csv:2: expected 2 columns"),
    ("0,1\n1,\n", {}, "bad.csv:2: column 2: cannot read ''"),
    ("0\n1\n", {}, "needs a label column and at least one feature column"),
    ("0,nan\n1,2\n", {}, "non-finite value (nan)"),
    ("0,1\n\n0.5,1\n1,2\n", {}, "label 0.5 on line 3 is not an integer"),
    ("-1,1\n1,2\n", {}, "label -1 on line 1 is out of range"),
    ("1e9,1\n1,2\n", {}, "out of range"),
    ("y,a\n0,1\n", {"label_column": "z"}, "no column named `z` (columns: y, a)"),
    ("0,1\n1,2\n", {"label_column": "y"}, "has no header row"),
    ("0,1\n1,2\n", {"label_column": 2}, "label column 2 is out of range for 2 columns"),
    ("y,a\n0,1\n", {"header": False}, "bad.csv:1: column 1: cannot read 'y'"),
])
def test_csv_rejects_bad_contents(tmp_path, text, options, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    raises_one_line(load_csv, path, match=match, **options)


def test_csv_rejects_bad_files(tmp_path):
    raises_one_line(load_csv, tmp_path / "absent.csv", match="file not found")
    raises_one_line(load_dataset, str(tmp_path / "absent.csv"), match="file not found")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\xff\xfe\x80 not utf-8")
    raises_one_line(load_csv, binary, match="cannot read as a text file")
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("0,1\n")
    raises_one_line(load_dataset, str(tiny), match="cannot split 1 samples")


# ---------------------------------------------------------------- IDX parsing

def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype, code", [
    (np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
    (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_round_trip(dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    parsed = parse_idx(idx_bytes(array, code))
    assert parsed.dtype == np.dtype(dtype) and parsed.dtype.isnative
    assert np.array_equal(parsed, array) and parsed.flags.writeable


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array, 0x08))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array, 0x08)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), array)
    raises_one_line(read_idx, tmp_path / "absent.gz", match="cannot read")


@pytest.mark.parametrize("data, match", [
    (b"\x00\x00", "too short"),
    (b"\x01\x02\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad magic number 0x01020801"),
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", "unknown IDX dtype code 0x07"),
    (b"\x00\x00\x08\x00", "zero dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header (8 of 16 bytes)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02", "truncated IDX data (10 of 13 bytes"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 3, "truncated IDX data"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01" + b"\x01\x02", "1 unexpected bytes"),
    (b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff", "truncated IDX data"),
])
def test_idx_rejects_malformed_data(data, match):
    raises_one_line(parse_idx, data, "t.idx", match=match)


def test_idx_rejects_corrupt_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8), 0x08))
    (tmp_path / "short.gz").write_bytes(packed[:-20])
    raises_one_line(read_idx, tmp_path / "short.gz", match="corrupt or truncated gzip")
    (tmp_path / "garbage.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    raises_one_line(read_idx, tmp_path / "garbage.gz", match="corrupt or truncated gzip")


# ---------------------------------------------------------------- MNIST lookup and download

def fake_mnist(directory: Path, n_train=5, n_test=3, compress=True) -> dict[str, bytes]:
    """A tiny MNIST-format set; returns the uncompressed bytes of each file."""
    rng = np.random.default_rng(0)
    contents = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, 28, 28), np.uint8), 8),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_train, np.uint8), 8),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 28, 28), np.uint8), 8),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_test, np.uint8), 8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, data in contents.items():
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return contents


def trust(monkeypatch, contents: dict[str, bytes]) -> None:
    """Make the fake files' checksums the expected ones."""
    for stem, data in contents.items():
        monkeypatch.setitem(mnist.FILES, stem, hashlib.md5(data).hexdigest())


def test_search_dirs_follow_env_and_xdg(monkeypatch, tmp_path):
    assert mnist.search_dirs() == [tmp_path / "cache" / "netlang" / "mnist"]
    monkeypatch.setenv("NETLANG_DATA", str(tmp_path / "data"))
    assert mnist.search_dirs() == [tmp_path / "data" / "mnist",
                                   tmp_path / "cache" / "netlang" / "mnist"]
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist.cache_dir() == tmp_path / "home" / ".cache" / "netlang" / "mnist"


def test_mnist_found_in_data_dir_and_cache(monkeypatch, tmp_path):
    trust(monkeypatch, fake_mnist(tmp_path / "cache" / "netlang" / "mnist", n_train=4))
    assert load_mnist().x_train.shape == (4, 28, 28)
    # NETLANG_DATA comes first, and plain (uncompressed) files are accepted too.
    trust(monkeypatch, fake_mnist(tmp_path / "data" / "mnist", n_train=7, compress=False))
    monkeypatch.setenv("NETLANG_DATA", str(tmp_path / "data"))
    m = load_mnist()
    assert m.x_train.shape == (7, 28, 28) and m.x_train.dtype == np.uint8
    assert m.y_test.shape == (3,) and m.y_test.dtype == np.uint8
    ds = load_dataset("mnist")
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0


def test_mnist_checksum_mismatch(tmp_path):
    fake_mnist(tmp_path / "m")
    message = raises_one_line(load_mnist, tmp_path / "m", match="checksum mismatch")
    assert "train-images-idx3-ubyte.gz" in message and mnist.FILES["train-images-idx3-ubyte"] \
        in message
    assert load_mnist(tmp_path / "m", verify=False).x_test.shape == (3, 28, 28)


def test_mnist_shape_checks_without_verification(tmp_path):
    contents = fake_mnist(tmp_path / "m")
    labels = idx_bytes(np.zeros(4, np.uint8), 8)
    (tmp_path / "m" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    raises_one_line(load_mnist, tmp_path / "m", verify=False,
                    match="MNIST train set has 5 images but 4 labels")
    del contents
    (tmp_path / "m" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(5, 12, np.uint8), 8)))
    raises_one_line(load_mnist, tmp_path / "m", verify=False, match="labels must be 0..9")


def test_mnist_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("NETLANG_DATA", str(tmp_path / "data"))
    message = raises_one_line(load_mnist, match="MNIST file train-images-idx3-ubyte.gz")
    cache = tmp_path / "cache" / "netlang" / "mnist"
    assert f"put it in {cache}" in message and "NETLANG_DATA" in message
    assert str(tmp_path / "data" / "mnist") in message  # where it looked
    assert "download failed from 3 mirror(s): network disabled in tests" in message
    assert not cache.exists() or not any(cache.iterdir())
    message = raises_one_line(load_mnist, allow_download=False, match="downloads disabled")
    assert "NETLANG_DATA" in message


def test_mnist_download_falls_back_across_mirrors(monkeypatch, tmp_path):
    served = fake_mnist(tmp_path / "mirror")
    trust(monkeypatch, served)
    requested = []

    def fetch(url, timeout):
        requested.append(url)
        if url.startswith(mnist.MIRRORS[0]):
            raise urllib.error.HTTPError(url, 503, "Slow Down", None, None)
        if url.startswith(mnist.MIRRORS[1]) and "t10k-labels" in url:
            return gzip.compress(b"corrupted copy")  # fails its checksum: next mirror
        return (tmp_path / "mirror" / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(mnist, "fetch_url", fetch)
    m = load_mnist()
    assert m.x_train.shape == (5, 28, 28)
    cache = tmp_path / "cache" / "netlang" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in mnist.FILES)
    assert any(url.startswith(mnist.MIRRORS[2]) for url in requested)
    assert len(requested) == 9  # 4 files x (503, success) + one corrupt copy
    requested.clear()
    load_mnist()  # now cached: no more requests
    assert requested == []


def test_mnist_download_reports_every_failure(monkeypatch, tmp_path):
    def fetch(url, timeout):
        return gzip.compress(b"wrong")
    message = raises_one_line(load_mnist, tmp_path / "m", fetch=fetch,
                              match="download failed from 3 mirror(s): served a copy whose md5")
    assert f"put it in {tmp_path / 'm'}" in message

    def mixed(url, timeout):
        if "amazonaws" in url:
            raise TimeoutError("timed out")
        if "googleapis" in url:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return b"\x1f\x8b not really gzip"
    message = raises_one_line(mnist.download, "t10k-labels-idx1-ubyte", tmp_path / "m",
                              fetch=mixed, match="download failed: ossci-datasets")
    assert "timed out" in message and "storage.googleapis.com: HTTP 404 Not Found" in message
    assert "yann.lecun.com: " in message and "corrupt or truncated gzip" in message
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_mnist_download_of_a_real_file(tmp_path, mnist_dir):
    source = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    if not source.is_file():
        pytest.skip(f"{mnist_dir} holds the file uncompressed: the download's checksum is the .gz's")
    path = mnist.download("t10k-labels-idx1-ubyte", tmp_path / "dl",
                          fetch=lambda url, timeout: source.read_bytes())
    assert path.read_bytes() == source.read_bytes()
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(scope="module")
def real_mnist(mnist_dir):
    return load_mnist(mnist_dir, allow_download=False)


def test_real_mnist_shapes_and_label_counts(real_mnist):
    m = real_mnist
    assert m.x_train.shape == (60000, 28, 28) and m.x_train.dtype == np.uint8
    assert m.x_test.shape == (10000, 28, 28) and m.y_test.shape == (10000,)
    assert np.bincount(m.y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(m.y_test).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_through_netlang_data(monkeypatch, mnist_dir):
    monkeypatch.setenv("NETLANG_DATA", str(mnist_dir.parent))
    ds = load_dataset("mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_train.min() == 0 and ds.x_train.max() == 1
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10
    assert fit_to_shape(ds.x_test, (784,)).shape == (10000, 784)
    # A short run's first examples, cut before the images are scaled: the same values.
    first = load_dataset("mnist", limit=300)
    assert first.x_train.shape == (300, 28, 28, 1) and first.x_test.shape == (300, 28, 28, 1)
    for whole, cut in ((ds.x_train, first.x_train), (ds.y_train, first.y_train),
                       (ds.x_test, first.x_test), (ds.y_test, first.y_test)):
        assert cut.dtype == whole.dtype and np.array_equal(cut, whole[:300])
    assert first.value_range == ds.value_range and first.num_classes == 10
    for bad in (0, -5, 2.5, True):
        with pytest.raises(DataError, match="limit must be a positive integer"):
            load_dataset("mnist", limit=bad)


# ---------------------------------------------------------------- helpers

def small_set(x_dtype=np.float32) -> Dataset:
    rng = np.random.default_rng(1)
    x = (rng.uniform(0, 255, (20, 3)) if x_dtype != np.uint8
         else rng.integers(0, 256, (20, 3))).astype(x_dtype)
    return Dataset(x[:15], np.arange(15) % 2, x[15:], np.arange(5) % 2, "small", 2)


def test_normalize():
    images = small_set(np.uint8)
    scaled = normalize(images)
    assert scaled.x_train.dtype == np.float32 and scaled.x_train.max() <= 1.0
    np.testing.assert_allclose(scaled.x_test * 255, images.x_test, rtol=1e-6)
    floats = small_set()
    standard = normalize(floats, "standardize")
    np.testing.assert_allclose(standard.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(standard.x_train.std(axis=0), 1, atol=1e-5)
    mean, std = floats.x_train.mean(axis=0), floats.x_train.std(axis=0)
    np.testing.assert_allclose(standard.x_test, (floats.x_test - mean) / std, rtol=1e-4)
    constant = Dataset(np.ones((4, 2)), np.zeros(4, int), np.ones((2, 2)), np.zeros(2, int),
                       "c", 2)
    assert np.array_equal(normalize(constant, "standardize").x_train, np.zeros((4, 2)))
    assert normalize(floats, "auto").x_train.max() > 1  # floats are left alone
    raises_one_line(normalize, floats, "scale", match="expects uint8")
    raises_one_line(normalize, floats, "minmax", match="unknown normalization `minmax`")


def test_validation_split():
    ds = small_set()
    split = validation_split(ds, 0.2, seed=5)
    assert (len(split.x_train), len(split.x_val)) == (12, 3)
    rows = {tuple(r) for r in np.vstack([split.x_train, split.x_val]).tolist()}
    assert rows == {tuple(r) for r in ds.x_train.tolist()}
    again = validation_split(ds, 0.2, seed=5)
    assert np.array_equal(split.x_val, again.x_val)
    assert np.array_equal(split.x_test, ds.x_test)
    assert "val=(3, 3)" in repr(split)
    assert normalize(split).x_val.dtype == np.float32
    for bad in (0, 1, -0.5, 1.5, True, "0.2"):
        raises_one_line(validation_split, ds, bad, match="strictly between 0 and 1")
    raises_one_line(validation_split, ds, 0.01, match="each part needs at least one sample")


def test_batches():
    epoch1 = list(batches(10, 4, np.random.default_rng(0)))
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(np.concatenate(epoch1).tolist()) == list(range(10))
    rng = np.random.default_rng(3)
    first, second = np.concatenate(list(batches(50, 8, rng))), \
        np.concatenate(list(batches(50, 8, rng)))
    assert not np.array_equal(first, second)  # a fresh order each epoch ...
    replay = np.random.default_rng(3)
    assert np.array_equal(np.concatenate(list(batches(50, 8, replay))), first)  # ... yet fixed
    assert [b.tolist() for b in batches(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [len(b) for b in batches(10, 4, 7, drop_last=True)] == [4, 4]
    assert list(batches(0, 4, 1)) == []
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="batch size"):
            next(batches(10, bad))


def test_check_labels():
    assert check_labels(np.array([0.0, 2.0, 1.0]), 3).dtype == np.int64
    assert check_labels([1, 0]).tolist() == [1, 0]
    raises_one_line(check_labels, np.array([0, 10]), 10,
                    match="label 10 at index 1 is out of range (expected 0..9)")
    raises_one_line(check_labels, np.array([0.0, np.nan]), match="nan")
    raises_one_line(check_labels, np.array([[0, 1]]), match="1-D")
    raises_one_line(check_labels, np.array(["cat", "dog"]), match="numeric")
    raises_one_line(check_labels, np.array([True, False]), match="numeric")


def test_fit_to_shape():
    x = np.zeros((3, 784), np.float32)
    assert fit_to_shape(x, (28, 28, 1)).shape == (3, 28, 28, 1)
    assert fit_to_shape(fit_to_shape(x, (28, 28, 1)), [784]).shape == (3, 784)
    assert fit_to_shape(x, (None, 784)) is x
    message = raises_one_line(fit_to_shape, x, (100,), match="data samples have shape 784")
    assert "model input is 100 (100 values)" in message
    raises_one_line(fit_to_shape, x, (0, 784), match="positive integers")


def test_dataset_checks_its_arrays():
    x = np.zeros((4, 2), np.float32)
    raises_one_line(Dataset, x, np.zeros(3, int), x, np.zeros(4, int), "d", 2,
                    match="train set has 4 samples but 3 labels")
    raises_one_line(Dataset, x, np.zeros(4, int), np.zeros((4, 3)), np.zeros(4, int), "d", 2,
                    match="test samples have shape (3,)")
    raises_one_line(Dataset, np.zeros(4), np.zeros(4, int), x, np.zeros(4, int), "d", 2,
                    match="feature axis")
