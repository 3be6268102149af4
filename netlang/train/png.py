"""Reading inputs for `netlang predict`: `.npy` arrays and PNG images; writing PNGs.

PNGs are decoded by Pillow when it is installed, otherwise by the small decoder
here (zlib only): 8-bit greyscale, grey+alpha, RGB, RGBA and palette images,
not interlaced -- what image editors and `PIL.Image.save` write by default.
Every problem is a one-line `DataError`.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from netlang.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel


def read_png(path) -> np.ndarray:
    """The image as uint8 (height, width, channels), channels 1 (grey), 3 (RGB) or 4 (RGBA)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"{path}: not a PNG file")
    try:
        from PIL import Image  # optional: handles every PNG variant
    except ImportError:
        return decode_png(data, str(path))
    import io
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            if mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in mode or "transparency" in image.info
                                      else "RGB" if mode not in ("1", "I", "I;16", "F") else "L")
            array = np.asarray(image)
    except Exception as exc:  # Pillow raises many types for damaged files
        raise DataError(f"{path}: cannot decode PNG: {exc}") from None
    return array[..., None] if array.ndim == 2 else array


def decode_png(data: bytes, name: str = "<png>") -> np.ndarray:
    """Decode PNG bytes with zlib alone (8-bit, non-interlaced)."""
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"{name}: not a PNG file")
    pos = len(PNG_SIGNATURE)
    header = None
    palette = None
    alpha = None
    idat = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise DataError(f"{name}: PNG is truncated (chunk {kind.decode('latin-1')!r})")
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(crc) == 4 and struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise DataError(f"{name}: PNG chunk {kind.decode('latin-1')!r} is damaged "
                            f"(bad checksum)")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise DataError(f"{name}: PNG header is malformed")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"tRNS":
            alpha = np.frombuffer(body, dtype=np.uint8)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise DataError(f"{name}: PNG has no IHDR header")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS:
        raise DataError(f"{name}: PNG colour type {colour} is not valid")
    if depth != 8:
        raise DataError(f"{name}: {depth}-bit PNGs are not supported without Pillow (save it "
                        f"as 8-bit, or pip install pillow)")
    if interlace:
        raise DataError(f"{name}: interlaced PNGs are not supported without Pillow (save it "
                        f"without interlacing, or pip install pillow)")
    if not width or not height:
        raise DataError(f"{name}: PNG has no pixels ({width}x{height})")
    if width * height > 100_000_000:
        raise DataError(f"{name}: PNG is too large ({width}x{height})")
    channels = _CHANNELS[colour]
    stride = width * channels
    try:
        raw = zlib.decompressobj().decompress(b"".join(idat), height * (stride + 1))
    except zlib.error as exc:
        raise DataError(f"{name}: PNG image data is damaged ({exc})") from None
    if len(raw) < height * (stride + 1):
        raise DataError(f"{name}: PNG image data is truncated")
    pixels = _unfilter(raw, height, stride, channels, name)
    image = pixels.reshape(height, width, channels)
    if colour == 3:
        if palette is None:
            raise DataError(f"{name}: palette PNG has no palette")
        index = image[..., 0]
        if index.max() >= len(palette):
            raise DataError(f"{name}: PNG pixel refers past the end of its palette")
        rgb = palette[index]
        if alpha is not None:
            a = np.full(len(palette), 255, dtype=np.uint8)
            a[:len(alpha)] = alpha[:len(palette)]
            return np.concatenate([rgb, a[index][..., None]], axis=-1)
        return rgb
    if colour == 4:  # grey + alpha → grey; alpha is dropped as for RGBA → RGB in predict
        return image
    return image


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, name: str) -> np.ndarray:
    """Undo the per-scanline filters (None, Sub, Up, Average, Paeth)."""
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    buf = np.frombuffer(raw, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        kind = buf[start]
        line = buf[start + 1:start + 1 + stride].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (1, 3, 4):
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                if kind == 1:
                    predictor = a
                elif kind == 3:
                    predictor = (a + b) >> 1
                else:
                    c = prev[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + predictor) & 0xFF
        else:
            raise DataError(f"{name}: PNG scanline {y} has unknown filter type {kind}")
        out[y] = cur
        prev = cur
    return out


def encode_png(image: np.ndarray) -> bytes:
    """A minimal 8-bit PNG (filter 0) of a (H, W) or (H, W, 1|3|4) uint8 array; for tests and
    for writing example inputs."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    height, width, channels = image.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + image[y].tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour,
                                                       0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_png(path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W) or (H, W, 1|3|4) image as a PNG, atomically (saliency maps,
    reconstructions); returns the path."""
    from netlang.weights import atomic_write
    data = encode_png(image)
    atomic_write(path, lambda handle: handle.write(data))
    return Path(path)


def image_to_input(image: np.ndarray, shape: tuple, name: str = "image") -> np.ndarray:
    """A uint8 (H, W, C) image as one float32 example of the model's input `shape`, in [0, 1].

    Colour is converted to grey (ITU-R 601 luma) for one-channel models and grey is
    repeated for three-channel ones; alpha is dropped.  Sizes must match: no resizing.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels in (2, 4):
        image, channels = image[..., :channels - 1], channels - 1
    want_channels = shape[-1] if len(shape) == 3 else (1 if len(shape) < 3 else None)
    if len(shape) == 3 or int(np.prod(shape)) == image.shape[0] * image.shape[1]:
        target = want_channels if want_channels is not None else channels
        if target == 1 and channels == 3:
            image = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                          dtype=np.float32))[..., None]
        elif target == 3 and channels == 1:
            image = np.repeat(image, 3, axis=-1)
    x = image.astype(np.float32) / np.float32(255.0)
    if int(np.prod(shape)) != x.size:
        h, w = image.shape[:2]
        raise DataError(f"{name}: the image is {w}x{h} with {x.shape[-1]} channel(s) "
                        f"({x.size} values) but the model input is "
                        f"{'x'.join(map(str, shape))} ({int(np.prod(shape))} values); "
                        f"resize it first")
    return x.reshape(shape)
