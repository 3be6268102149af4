"""Image folders: `folder:PATH`, with `PATH/train/<class>/*.png|jpg|jpeg`, `PATH/test/<class>/*`
and optionally `PATH/val/<class>/*`.

Classes are the train split's sub-folders sorted by name; label i is the i-th. Images are
decoded with Pillow (an optional dependency, `netlang[images]`), converted to the model's
channels (1: grey "L", 3: "RGB"), laid out channels-last `[H, W, C]` as float32 in [0, 1],
and either checked against the model's size or resized to it (`image_size`). Every file is
untrusted: an unreadable, corrupt or oversized image is a one-line `DataError` naming it, and
each split is decoded into one array allocated up front from its file count and the shape,
so memory never holds more than the set itself and one image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from netlang.data.dataset import Dataset
from netlang.errors import DataError
from netlang.ir.train_config import IMAGE_SIZES
from netlang.train.png import PNG_SIGNATURE

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The largest image decoded (width × height): 4096 × 4096. Pillow's own decompression-bomb
# limit is set to it too, so a file whose header claims more is refused before it is decoded.
MAX_IMAGE_PIXELS = 4096 * 4096
# A decoded set is one float32 array in memory: beyond this it is refused before decoding.
MAX_DECODED_BYTES = 8 * 2 ** 30
SPLITS = ("train", "val", "test")
# The bytes that open every .npy file (numpy.lib.format), and every JPEG (its SOI marker and
# the first byte of the next marker).
NPY_SIGNATURE = b"\x93NUMPY"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Pillow modes that are grey already; everything else converts to grey through RGB.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# The modes Pillow opens a 16-bit grey PNG in: its convert("L") clips them at 255 instead of
# scaling, so they are brought to 8 bits first (65535 / 257 = 255).
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")


def is_folder_spec(spec: str) -> bool:
    """Whether a `--data` spec names an image folder (`folder:PATH`)."""
    return isinstance(spec, str) and spec.strip().lower().startswith(FOLDER_PREFIX)


def check_image_size(image_size: str) -> str:
    """`image_size` itself, or a one-line DataError naming the choices."""
    if image_size not in IMAGE_SIZES:
        raise DataError(f"unknown image_size `{image_size}` (expected "
                        f"{' or '.join(IMAGE_SIZES)})")
    return image_size


def load_image_folder(spec: str | Path, *, input_shape=None,
                      image_size: str = "check") -> Dataset:
    """The images under `spec` (`folder:PATH` or PATH) as a `Dataset` whose `class_names`
    are the train split's class folders.

    `input_shape` is the model input the images feed: `(H, W, C)` with C 1 or 3, `(H, W)`
    (grey), or flat `(H·W·C,)` (channels then follow from the first image's size; only
    `check` applies, since a flat input has no height and width to resize to). Without it,
    the first training image sets the shape (its size; grey or RGB by its mode).
    `image_size`: "check" refuses an image of another size, "resize" resizes it (bilinear).
    """
    check_image_size(image_size)
    text = str(spec).strip()
    root = Path(text[len(FOLDER_PREFIX):] if is_folder_spec(text) else text)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a folder (an image folder holds train/<class>/ and "
                        f"test/<class>/ folders of .png or .jpg images)")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (an image folder holds train/<class>/ and "
                        f"test/<class>/ folders of .png or .jpg images)")
    classes = _class_folders(root / "train", root)
    if len(classes) < 2:
        found = f"only `{classes[0]}`" if classes else "none"
        raise DataError(f"{root / 'train'}: an image folder needs a sub-folder per class, at "
                        f"least 2 (found {found})")
    files = {}
    for split in SPLITS:
        folder = root / split
        if split == "val" and not folder.is_dir():
            continue
        extra = [name for name in _class_folders(folder, root) if name not in classes]
        if extra:
            raise DataError(f"{folder / extra[0]}: class `{extra[0]}` has no folder in "
                            f"{root / 'train'} (its classes: {', '.join(classes)})")
        files[split] = [(path, label) for label, name in enumerate(classes)
                        for path in image_files(folder / name)]
        if split == "train":   # a class never trained on could never be predicted
            empty = next((name for name in classes if not image_files(folder / name)), None)
            if empty is not None:
                raise DataError(f"{folder / empty}: class `{empty}` has no .png or .jpg images "
                                f"to train on")
        if not files[split]:
            raise DataError(f"{folder}: no .png or .jpg images in its class folders")
    shape = image_shape(files["train"][0][0], input_shape, image_size)
    arrays = {split: (read_images([p for p, _ in pairs], shape, image_size),
                      np.array([label for _, label in pairs], dtype=np.int64))
              for split, pairs in files.items()}
    x_val, y_val = arrays.get("val", (None, None))
    return Dataset(*arrays["train"], *arrays["test"], root.resolve().name, len(classes),
                   x_val=x_val, y_val=y_val, value_range=(0.0, 1.0), class_names=tuple(classes))


def image_files(folder: Path) -> list[Path]:
    """The .png/.jpg/.jpeg files directly in `folder`, sorted by name (other files and hidden
    ones, such as .DS_Store, are not images and are skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and p.is_file())


def image_shape(first: Path, input_shape, image_size: str) -> tuple[int, int, int]:
    """The (H, W, C) every image is decoded to, for a model input `input_shape` (None: the
    first image's own size and channels)."""
    if input_shape is None:
        with _open(first) as image:
            width, height = image.size
            return height, width, 1 if image.mode in _GREY_MODES else 3
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) == 3:
        if shape[2] not in (1, 3):
            raise DataError(f"images have 1 channel (grey) or 3 (RGB), but the model input is "
                            f"{_shape_text(shape)} ({shape[2]} channels)")
        return shape
    if len(shape) != 1:
        raise DataError(f"images are read as [H, W, C] or flat [H*W*C]; the model input is "
                        f"{_shape_text(shape)}")
    if image_size == "resize":
        raise DataError(f"image_size resize needs a model input of shape [H, W, C] to resize "
                        f"to; this one is flat ({shape[0]} values)")
    with _open(first) as image:
        width, height = image.size
    channels, rest = divmod(shape[0], width * height)
    if rest or channels not in (1, 3):
        raise DataError(f"{first}: the image is {width}x{height}, which a flat input of "
                        f"{shape[0]} values does not hold with 1 or 3 channels")
    return height, width, channels


def read_images(paths, shape: tuple[int, int, int], image_size: str = "check") -> np.ndarray:
    """The images at `paths` as one float32 array (N, H, W, C) in [0, 1], decoded one at a
    time into an array allocated once."""
    height, width, channels = shape
    check_image_size(image_size)
    paths = list(paths)
    size = len(paths) * height * width * channels * 4
    if size > MAX_DECODED_BYTES:
        raise DataError(f"{len(paths):,} images of {width}x{height}x{channels} take "
                        f"{size / 2 ** 30:.1f} GiB decoded, over the "
                        f"{MAX_DECODED_BYTES // 2 ** 30} GiB a data set may hold in memory")
    out = np.empty((len(paths), height, width, channels), dtype=np.float32)
    mode = "L" if channels == 1 else "RGB"
    scale = np.float32(255)   # divided, as netlang.data.normalize scales uint8
    for i, path in enumerate(paths):
        with _open(path) as image:
            if image.size != (width, height):
                if image_size == "check":
                    raise DataError(f"{path}: the image is {image.width}x{image.height} but the "
                                    f"model reads {width}x{height} (`image_size=\"resize\"` "
                                    f"resizes it)")
            pixels = _decode(image, path, mode, (width, height))
        np.divide(pixels.reshape(height, width, channels), scale, out=out[i])
    return out


def read_image_input(paths, input_shape, image_size: str = "check") -> np.ndarray:
    """The image files `paths` as one batch for a model input of shape `input_shape`
    (channels-last [H, W, C], or flat), float32 in [0, 1]: what `netlang predict` and
    `Model.predict_images` feed the model."""
    paths = list(paths)
    if not paths:
        raise DataError("no images to read")
    shape = image_shape(paths[0], input_shape, image_size)
    return read_images(paths, shape, image_size).reshape((len(paths),) + tuple(input_shape))


def image_paths(inputs) -> list[Path]:
    """The image files `inputs` name: files as given, and the .png/.jpg/.jpeg files in each
    folder and its sub-folders (hidden ones skipped), sorted by path."""
    paths = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"{path}: no .png or .jpg images in this folder")
            paths.extend(found)
        elif not path.is_file():
            raise DataError(f"{path}: no such file")
        elif is_npy_file(path):
            raise DataError(f"{path}: an .npy array is predicted on its own, not among images")
        elif path.suffix.lower() not in IMAGE_SUFFIXES and not _has_image_signature(path):
            raise DataError(f"{path}: expected an .npy array or a PNG or JPEG image")
        else:
            paths.append(path)
    return paths


def _has_image_signature(path: Path) -> bool:
    """Whether the file at `path` opens as a PNG or a JPEG does (whatever its name)."""
    with open(path, "rb") as f:
        start = f.read(len(PNG_SIGNATURE))
    return start.startswith((PNG_SIGNATURE, JPEG_SIGNATURE))


def is_npy_file(path: Path) -> bool:
    """Whether `path` is an .npy array (by its suffix or NumPy's signature), predicted on
    its own rather than read as an image."""
    if path.suffix.lower() == ".npy":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(NPY_SIGNATURE)) == NPY_SIGNATURE


def pillow():
    """Pillow's Image module, with its decompression-bomb limit at MAX_IMAGE_PIXELS; a
    one-line DataError naming the extra to install when Pillow is missing."""
    try:   # imported here: Pillow is an optional dependency (netlang[images])
        from PIL import Image
    except ImportError:
        raise DataError("image folders are decoded with Pillow, which is not installed: "
                        "pip install \"netlang[images]\"") from None
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return Image


def _open(path: Path):
    """`path` opened (its header read, not yet decoded), or a one-line DataError."""
    Image = pillow()
    try:
        with warnings.catch_warnings():
            # Pillow checks the size in the header against its limit: it warns between the
            # limit and twice it, and refuses beyond; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=("PNG", "JPEG"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: the image is over {MAX_IMAGE_PIXELS:,} pixels "
                        f"(a decompression bomb, or far larger than a model reads)") from None
    except Exception as exc:  # Pillow raises many types for files it cannot identify
        raise DataError(f"{path}: not a readable PNG or JPEG image ({_reason(exc)})") from None
    return image


def _decode(image, path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image's pixels in `mode`, at `size` (width, height), as uint8; a damaged file is a
    one-line DataError."""
    Image = pillow()
    try:
        image.load()
        if image.mode in _SIXTEEN_BIT_MODES:
            eight_bit = np.rint(np.asarray(image, dtype=np.float64) / 257).clip(0, 255)
            image = Image.fromarray(eight_bit.astype(np.uint8), "L")
        converted = image if image.mode == mode else image.convert(mode)
        if converted.size != size:
            converted = converted.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(converted, dtype=np.uint8)
    except Exception as exc:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ...
        raise DataError(f"{path}: cannot decode the image ({_reason(exc)})") from None


def _class_folders(folder: Path, root: Path) -> list[str]:
    """The class folders in a split folder, sorted by name."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (an image folder {root} holds train/<class>/ "
                        f"and test/<class>/ folders of images)")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]

