"""Image folders (`--data folder:PATH`), class names saved with a run and printed by
`netlang predict`, and the train section's `augment` (netlang/data/folders.py,
netlang/train/augment.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import run_cli as run
from conftest import straight_and_resumed

import netlang
from netlang.data import load_dataset, load_image_folder
from netlang.data.folders import read_images
from netlang.errors import DataError, UsageError
from netlang.ir.train_config import Choice
from netlang.train.augment import Augmenter
from netlang.weights import load_weights

# The tests write their images with Pillow (netlang imports it only when it reads images).
Image = pytest.importorskip("PIL.Image", reason="image folders are decoded with Pillow")

CLASSES = ("bar", "column", "square")
SIZE = 12

CNN = """
input image: [12, 12, 1]
input label: int32[]
output logits = image -> conv2d(4, 3, padding = 1) -> relu -> maxpool(2) -> flatten -> dense(3)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.02)
  batch_size 16
  epochs 6
  AUGMENT
}
"""


def shape_image(kind: str, rng) -> np.ndarray:
    """A 12×12 grey picture of a horizontal bar, a vertical bar or a square, placed at random
    on a dark noisy background."""
    image = np.full((SIZE, SIZE), 20, dtype=np.int64)
    r, c = rng.integers(2, SIZE - 8, 2)
    if kind == "bar":
        image[r + 3:r + 5, 1:SIZE - 1] = 230
    elif kind == "column":
        image[1:SIZE - 1, c + 3:c + 5] = 230
    else:
        image[r:r + 6, c:c + 6] = 230
    return np.clip(image + rng.integers(0, 25, image.shape), 0, 255).astype(np.uint8)


def make_folder(root, counts=(("train", 30), ("test", 10))):
    """root/<split>/<class>/NNN.png for each class, `n` images per class and split."""
    rng = np.random.default_rng(0)
    for split, n in counts:
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(shape_image(kind, rng)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images") / "shapes")


def model_file(tmp_path, augment="", name="cnn.net"):
    path = tmp_path / name
    path.write_text(CNN.replace("AUGMENT", augment))
    return path


def test_a_folder_loads_as_classes_in_name_order_at_the_model_shape(shapes):
    ds = load_dataset(f"folder:{shapes}")
    assert ds.class_names == CLASSES and ds.num_classes == 3 and ds.name == "shapes"
    assert ds.x_train.shape == (90, 12, 12, 1) and ds.x_test.shape == (30, 12, 12, 1)
    assert ds.x_train.dtype == np.float32 and ds.value_range == (0.0, 1.0)
    assert ds.y_train.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    pixels = np.asarray(Image.open(shapes / "train" / "column" / "004.png"))
    assert np.array_equal(ds.x_train[34, :, :, 0], pixels.astype(np.float32) / np.float32(255))
    rgb = load_image_folder(shapes, input_shape=(12, 12, 3))   # grey repeated in R, G, B
    assert rgb.x_train.shape == (90, 12, 12, 3)
    assert np.array_equal(rgb.x_train[..., 2:], ds.x_train)
    flat = load_image_folder(shapes, input_shape=(144,))
    assert flat.x_train.shape == (90, 12, 12, 1)   # training reshapes it to the flat input
    assert ds.x_val is None


def test_an_optional_val_folder_is_the_validation_split(tmp_path):
    root = make_folder(tmp_path / "v", (("train", 4), ("val", 2), ("test", 2)))
    ds = load_image_folder(f"folder:{root}")
    assert ds.x_val.shape == (6, 12, 12, 1) and ds.y_val.tolist() == [0, 0, 1, 1, 2, 2]


def test_train_from_the_cli_and_predict_names_on_a_folder(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", model_file(tmp_path), "--data", f"folder:{shapes}",
                            "--out", out, "--device", "reference")
    assert code == 0, err
    assert "shapes: 90 training images of 12x12x1 in 3 classes (bar, column, square), 30 to " \
           "test" in stdout
    assert json.loads((out / "summary.json").read_text())["test"]["accuracy"] >= 0.9  # chance: 1/3
    assert json.loads((out / "classes.json").read_text()) == {"classes": list(CLASSES)}
    # eval names the classes in the confusion matrix, as predict does.
    code, stdout, err = run(capsys, "eval", model_file(tmp_path), "--weights", out,
                            "--device", "reference")
    assert code == 0, err
    matrix = stdout.split("confusion matrix:\n")[1].splitlines()
    assert matrix[1].split() == list(CLASSES)
    assert [row.split("|")[0].strip() for row in matrix[2:]] == list(CLASSES)
    code, stdout, err = run(capsys, "eval", model_file(tmp_path), "--weights", out, "--json",
                            "--device", "reference")
    assert code == 0, err
    assert json.loads(stdout)["classes"] == list(CLASSES)
    code, stdout, err = run(capsys, "predict", model_file(tmp_path), "--weights", out,
                            shapes / "test", "--json", "--top-k", "2")
    assert code == 0, err
    result = json.loads(stdout)
    assert len(result["top"]) == 30 and result["classes"] == list(CLASSES)
    first = result["top"][0]
    assert first["file"].endswith("bar/000.png") and len(first["top_k"]) == 2
    assert {entry["class"] for entry in first["top_k"]} <= set(CLASSES)
    right = sum(entry["predicted"] == entry["file"].split("/")[-2] for entry in result["top"])
    assert right >= 27
    # A file that is neither an image nor an array, alone or among images, is named as such.
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    for inputs in ([notes], [notes, shapes / "test" / "bar" / "000.png"]):
        code, stdout, err = run(capsys, "predict", model_file(tmp_path), "--weights", out,
                                *inputs, "--device", "reference")
        assert code == 2
        assert err == f"error: {notes}: expected an .npy array or a PNG or JPEG image\n"
    code, stdout, _ = run(capsys, "predict", model_file(tmp_path), "--weights", out,
                          shapes / "test" / "square" / "000.png",
                          shapes / "test" / "bar" / "001.png", "--top-k", "1")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].endswith("square/000.png: square  (square: " + lines[0].split(": ")[-1])
    assert lines[1].split(": ")[1].startswith("bar")
    # From Python: the same files, the same order and the same probabilities as the CLI's.
    loaded = netlang.load(out)
    loaded.device = "reference"
    paths, probabilities = loaded.predict_images(shapes / "test")
    assert [str(p) for p in paths] == [entry["file"] for entry in result["top"]]
    np.testing.assert_allclose(probabilities, result["probabilities"], atol=1e-6)
    assert loaded.class_names == CLASSES
    with pytest.raises(DataError, match="expected an .npy array or a PNG or JPEG"):
        loaded.predict_images([notes])


def test_train_from_python_and_evaluate(shapes, tmp_path):
    model = netlang.compile(str(model_file(tmp_path)))
    model.device = "reference"
    history = model.fit(data=f"folder:{shapes}", verbose=0)
    assert history.class_names == CLASSES and model.class_names == CLASSES
    assert model.evaluate(data=f"folder:{shapes}")["accuracy"] >= 0.9
    # The train section names the folder: `data "folder:PATH"`.
    named = netlang.compile(str(model_file(tmp_path, f'data "folder:{shapes}"', "named.net")))
    named.device = "reference"
    assert named.fit(verbose=0, epochs=1).class_names == CLASSES


def test_another_size_is_an_error_naming_the_file_unless_resized(tmp_path, capsys):
    root = make_folder(tmp_path / "sizes", (("train", 2), ("test", 1)))
    odd = root / "train" / "bar" / "001.png"
    Image.new("L", (10, 14), 40).save(odd)
    with pytest.raises(DataError, match=r"001\.png: the image is 10x14 but the model reads "
                                        r"12x12") as caught:
        load_image_folder(root, input_shape=(12, 12, 1))
    assert "\n" not in str(caught.value)
    resized = load_image_folder(root, input_shape=(12, 12, 1), image_size="resize")
    assert resized.x_train.shape == (6, 12, 12, 1)
    assert np.allclose(resized.x_train[1], 40 / 255)   # a flat image stays flat
    code, _, err = run(capsys, "train", model_file(tmp_path), "--data", f"folder:{root}",
                       "--out", tmp_path / "r", "--device", "reference", "--epochs", "1")
    assert code == 2 and "001.png: the image is 10x14" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "train", model_file(tmp_path), "--data", f"folder:{root}",
                       "--out", tmp_path / "r", "--device", "reference", "--epochs", "1",
                       "--image-size", "resize", "-q")
    assert code == 0, err
    # eval applies the run's setting; from Python, evaluate takes it as fit does.
    code, out, err = run(capsys, "eval", model_file(tmp_path), "--weights", tmp_path / "r",
                         "--device", "reference")
    assert code == 0 and "folder:" in out, err
    model = netlang.load(tmp_path / "r", device="reference")
    with pytest.raises(DataError, match=r"001\.png: the image is 10x14"):
        model.evaluate(data=f"folder:{root}", split="train")
    assert model.evaluate(data=f"folder:{root}", split="train",
                          settings=["image_size=resize"])["examples"] == 6


def test_unreadable_and_huge_images_are_one_line_errors(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "bad", (("train", 2), ("test", 1)))
    corrupt = root / "test" / "square" / "000.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])   # the header, then the data cut off
    with pytest.raises(DataError, match=r"000\.png: cannot decode the image") as caught:
        load_image_folder(root)
    assert "\n" not in str(caught.value)
    corrupt.write_bytes(b"GIF89a not what its name says")
    with pytest.raises(DataError, match=r"000\.png: not a readable PNG or JPEG image"):
        load_image_folder(root)
    corrupt.unlink()
    # Over the pixel cap: Pillow's own decompression-bomb check refuses it from the header.
    monkeypatch.setattr("netlang.data.folders.MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    with pytest.raises(DataError, match=r"000\.png: the image is over 100 pixels"):
        load_image_folder(root)   # 144 pixels: over the cap, where Pillow only warns
    monkeypatch.setattr("netlang.data.folders.MAX_IMAGE_PIXELS", 50)
    with pytest.raises(DataError, match=r"000\.png: the image is over 50 pixels"):
        load_image_folder(root)   # over twice the cap, where Pillow raises


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    root = make_folder(tmp_path / "f", (("train", 1),))
    with pytest.raises(DataError, match=r"test: no such folder"):
        load_image_folder(root)
    (root / "test" / "circle").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class `circle` has no folder in"):
        load_image_folder(root)


def test_a_class_without_images_or_a_class_count_the_model_lacks_is_an_error(tmp_path):
    root = make_folder(tmp_path / "f", (("train", 1), ("test", 1)))
    (root / "train" / "circle").mkdir()
    (root / "train" / "circle" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"train/circle: class `circle` has no \.png or \.jpg "
                                        r"images to train on"):
        load_image_folder(root)
    (root / "train" / "circle" / "notes.txt").unlink()
    (root / "train" / "circle").rmdir()
    path = tmp_path / "four.net"
    path.write_text(CNN.replace("dense(3)", "dense(4)").replace("AUGMENT", ""))
    model = netlang.compile(str(path))
    model.device = "reference"
    with pytest.raises(DataError, match=r"f: 3 classes \(bar, column, square\), but the model "
                                        r"predicts 4"):
        model.fit(data=f"folder:{root}", verbose=0, epochs=1)
    with pytest.raises(DataError, match=r"f: 3 classes \(bar, column, square\), but the model "
                                        r"predicts 2"):
        load_dataset(f"folder:{root}", num_classes=2)
    with pytest.raises(DataError, match=r"four\.net: not a folder"):
        load_image_folder(path)


def test_without_pillow_the_error_names_the_extra(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "p", (("train", 1), ("test", 1)))
    monkeypatch.setitem(sys.modules, "PIL", None)   # the import fails as if not installed
    with pytest.raises(DataError, match=r'pip install "netlang\[images\]"'):
        load_image_folder(root)


def test_flip_crop_and_shift_move_pixels_as_documented():
    image = np.arange(2 * 4 * 5 * 1, dtype=np.float32).reshape(2, 4, 5, 1)
    flipped = Augmenter([Choice("flip", {"p": 1.0})], "image", 0).apply(image, [0, 1], 0)
    assert np.array_equal(flipped, image[:, :, ::-1])
    assert np.array_equal(Augmenter([Choice("flip", {"p": 0.0})], "image", 0).apply(
        image, [0, 1], 0), image)
    for name, args, fill in (("crop", {"padding": 2}, "constant"),
                             ("shift", {"pixels": 2}, "edge")):
        moved = Augmenter([Choice(name, args)], "image", 7).apply(image, np.arange(2), 0)
        padded = np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=fill)
        for i in range(2):   # some window of the padded image, at offsets 0..4
            windows = [(dy, dx) for dy in range(5) for dx in range(5)
                       if np.array_equal(moved[i], padded[i, dy:dy + 4, dx:dx + 5])]
            assert windows, (name, i)


def test_augmentation_is_keyed_by_seed_epoch_and_example():
    images = np.random.default_rng(1).random((64, 8, 8, 1), dtype=np.float32)
    choices = [Choice("crop", {"padding": 2}), Choice("flip", {"p": 0.5})]
    augment = Augmenter(choices, "image", 5)
    whole = augment.apply(images, np.arange(64), 0)
    assert np.array_equal(whole, Augmenter(choices, "image", 5).apply(images, np.arange(64), 0))
    # The same example, in another batch at another position, is augmented the same way.
    part = augment.apply(images[[40, 3]], np.array([40, 3]), 0)
    assert np.array_equal(part, whole[[40, 3]])
    assert not np.array_equal(augment.apply(images, np.arange(64), 1), whole)   # next epoch
    assert not np.array_equal(Augmenter(choices, "image", 6).apply(images, np.arange(64), 0),
                              whole)   # another seed
    flips = [np.array_equal(Augmenter([Choice("flip", {"p": 0.5})], "image", 5).apply(
        images[i:i + 1], [i], 0), images[i:i + 1, :, ::-1]) for i in range(64)]
    assert 16 <= sum(flips) <= 48   # about half


def test_augmented_training_is_reproducible_per_seed(shapes, tmp_path, capsys):
    augmented = model_file(tmp_path, "augment crop(padding = 2), flip, shift(1)")
    plain = model_file(tmp_path, "", "plain.net")
    weights = {}
    for name, model, seed in (("a", augmented, 0), ("b", augmented, 0), ("c", augmented, 1),
                              ("plain", plain, 0)):
        out = tmp_path / name
        code, _, err = run(capsys, "train", model, "--data", f"folder:{shapes}", "--out", out,
                           "--device", "reference", "--epochs", "2", "--seed", seed, "-q")
        assert code == 0, err
        weights[name] = load_weights(out / "weights.safetensors")[0]
    same = all(np.array_equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert same
    assert any(not np.array_equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
    # The same seed without augmentation: the same initial weights and order, other batches.
    assert any(not np.array_equal(weights["a"][k], weights["plain"][k]) for k in weights["a"])


def test_augment_settings_are_checked_and_formatted(tmp_path, capsys):
    messy = model_file(tmp_path, "augment   crop( padding=4 ),flip ,  shift(2)\n  image_size resize")
    code, stdout, _ = run(capsys, "fmt", messy)
    assert code == 0
    assert "  augment crop(padding = 4), flip, shift(2)\n  image_size resize\n" in stdout
    for line, words in (("augment flop", "unknown augmentation `flop` (did you mean `flip`?)"),
                        ("augment flip, flip", "`flip` is listed twice"),
                        ("augment crop(padding = 0)", "padding"),
                        ("image_size big", "`image_size` is check or resize")):
        code, _, err = run(capsys, "check", model_file(tmp_path, line, "bad.net"))
        assert code != 0 and words in err and err.startswith(str(tmp_path / "bad.net") + ":10:"), err


def test_augment_needs_an_image_input(tmp_path):
    flat = netlang.compile("input x: [144]\ninput label: int32[]\n"
                           "output logits = x -> dense(3)\n"
                           "train {\n  loss cross_entropy(logits, label)\n  augment flip\n}\n")
    flat.device = "reference"
    with pytest.raises(UsageError, match=r"`augment flip` moves and flips images, and input `x` "
                                         r"is \[144\], not an image \[H, W, C\]"):
        flat.fit(x=np.zeros((4, 144), np.float32), y=np.zeros(4, np.int64), verbose=0)


def test_augment_applies_to_image_arrays_from_any_source(shapes, tmp_path):
    ds = load_image_folder(shapes)
    model = netlang.compile(str(model_file(tmp_path, "augment crop(padding = 2), flip")))
    model.device = "reference"
    history = model.fit(x=ds.x_train, y=ds.y_train, epochs=3, verbose=0)
    assert history.last["accuracy"] >= 0.6 and history.class_names is None


def test_a_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 144).reshape(12, 12).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels = read_images([tmp_path / "deep.png"], (12, 12, 1))[0, ..., 0]
    # 8 bits of 16: within one step of 1/255 of the value itself.
    assert np.abs(pixels - ramp / 65535).max() <= 1 / 255


def test_jpeg_and_colour_images_convert_to_the_model_channels(tmp_path):
    root = make_folder(tmp_path / "c", (("train", 1), ("test", 1)))
    colour = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    colour[..., 0] = 200   # pure red
    Image.fromarray(colour).save(root / "train" / "bar" / "001.jpg", quality=100)
    Image.fromarray(colour).save(root / "test" / "bar" / "001.png")
    grey = load_image_folder(root, input_shape=(12, 12, 1))
    assert grey.x_train.shape == (4, 12, 12, 1)
    red_as_grey = round(200 * 299 / 1000) / 255   # ITU-R 601 luma of (200, 0, 0)
    assert np.allclose(grey.x_test[1], red_as_grey)
    assert np.allclose(grey.x_train[1], red_as_grey, atol=3 / 255)   # JPEG is lossy
    rgb = load_image_folder(root, input_shape=(12, 12, 3))
    assert np.allclose(rgb.x_test[1], np.array([200, 0, 0]) / 255)


def test_an_interrupted_augmented_run_resumes_to_the_same_weights(shapes, tmp_path):
    model = netlang.compile(str(model_file(tmp_path, "augment crop(padding = 2), flip")))
    # 90 images, 16 a batch: 6 steps an epoch, so step 8 is inside the second.
    whole, resumed = straight_and_resumed(model, tmp_path, 8, data=f"folder:{shapes}",
                                          device="reference", overrides=["epochs=2"])
    for name, value in whole.params.items():
        assert np.array_equal(value, resumed.params[name]), name
