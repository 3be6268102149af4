"""Examples drawn as pictures and tiled into one image (saliency maps, reconstructions).

A model's example is whatever its input shape says; to draw one it becomes an
(H, W, C) picture with one (grey) or three (RGB) channels:

- (H, W, C): as it is when C is 1 or 3, else the mean over channels;
- (H, W): one grey channel;
- (N,): a square when N is a perfect square (784 → 28×28, a flattened digit), else a
  one-pixel-high strip; anything else is flattened first.
"""

from __future__ import annotations

import math

import numpy as np

GAP = 2          # pixels between cells
GAP_LEVEL = 128  # mid grey: visible against black (MNIST) and white backgrounds alike


def as_picture(example) -> np.ndarray:
    """One example as a float (H, W, C) array, C being 1 or 3 (see the module docstring)."""
    x = np.asarray(example, dtype=np.float64)
    if x.ndim == 3:
        return x if x.shape[-1] in (1, 3) else x.mean(axis=-1, keepdims=True)
    if x.ndim == 2:
        return x[..., None]
    x = x.reshape(-1)
    side = math.isqrt(x.size)
    if side * side == x.size:
        return x.reshape(side, side, 1)
    return x.reshape(1, x.size, 1)


def display_range(*arrays) -> tuple[float, float]:
    """(low, high) mapped to black and white: [0, 1] when every value lies in it (images
    scaled as netlang scales them), else the values' own range, shared by all arrays so
    that they compare."""
    low = min(float(np.min(a)) for a in arrays)
    high = max(float(np.max(a)) for a in arrays)
    if 0.0 <= low and high <= 1.0:
        return 0.0, 1.0
    return low, high


def to_uint8(picture, low: float, high: float) -> np.ndarray:
    """Values in [low, high] as 0..255 (clipped outside it)."""
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((np.asarray(picture) - low) * scale), 0, 255).astype(np.uint8)


def image_grid(rows, gap: int = GAP) -> np.ndarray:
    """Tile rows of uint8 (H, W, C) pictures into one uint8 image, `gap` grey pixels apart.

    Cells may differ in size (each row is as tall as its tallest cell, each column as
    wide as its widest); grey pictures become RGB when any picture is in colour.
    """
    rows = [list(row) for row in rows]
    channels = max(cell.shape[-1] for row in rows for cell in row)
    rows = [[np.repeat(c, 3, axis=-1) if c.shape[-1] < channels else c for c in row]
            for row in rows]
    columns = max(len(row) for row in rows)
    heights = [max(c.shape[0] for c in row) for row in rows]
    widths = [max((row[j].shape[1] for row in rows if j < len(row)), default=0)
              for j in range(columns)]
    image = np.full((sum(heights) + gap * (len(rows) - 1),
                     sum(widths) + gap * (columns - 1), channels), GAP_LEVEL, dtype=np.uint8)
    top = 0
    for row, height in zip(rows, heights):
        left = 0
        for cell, width in zip(row, widths):
            image[top:top + cell.shape[0], left:left + cell.shape[1]] = cell
            left += width + gap
        top += height + gap
    return image


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a factor × factor block (nearest neighbour), to make small images
    visible in a viewer."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
