"""Augmentation of training images: the train section's `augment crop(padding = 4), flip,
shift(2)`, applied on the host to each training batch of an image input `[H, W, C]`.

- `crop(padding = p)`: the image padded with p zeros on each side, then cropped back to its
  size at a random place: a move by dy, dx, each uniform in -p..p, vacated pixels black
  (torchvision's `RandomCrop(size, padding=p)`).
- `flip(p = 0.5)`: a left-right flip with probability p.
- `shift(pixels = k)`: a move by dy, dx, each uniform in -k..k, vacated pixels repeating the
  nearest edge pixel (so that a white background stays white).

The augmentations apply in the order listed. Each draw is a counter-based random number,
the hash dropout masks use (`netlang.ops.norm_loops.dropout_bits`), keyed by the run's seed
and the epoch and counted by the example's index in the training set: an example is
augmented the same way whatever batch it lands in, a resumed epoch repeats the draws it made
before it was interrupted, and the same seed gives bit-identical batches. Validation, test
and prediction inputs are never augmented.
"""

from __future__ import annotations

import numpy as np

from netlang.errors import UsageError
from netlang.ops.norm_loops import dropout_bits
from netlang.train.binding import take_examples

# The stream of the run's seed the augmentations draw from (init, dropout and the shuffle
# draw from others: netlang/runtime/base.py, netlang/train/trainer.py).
AUGMENT_STREAM = 3
# Random numbers each augmentation may draw per example (a move draws two).
DRAWS_PER_AUGMENTATION = 2


class Augmenter:
    """The train section's augmentations of one image input, as a function of a batch."""

    def __init__(self, choices, input_name: str, seed: int):
        self.choices = tuple(choices)
        self.input_name = input_name
        self.seed = int(seed)

    def epoch_key(self, epoch: int) -> np.uint64:
        """The key of an epoch's draws: a hash of the seed, the stream and the epoch."""
        state = np.random.SeedSequence([self.seed, AUGMENT_STREAM, int(epoch)]).generate_state(
            1, np.uint64)
        return state[0]

    def apply(self, images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
        """`images` (N, H, W, C), the training examples `indices`, augmented for `epoch`: a
        new array; `images` is left as it is."""
        key = self.epoch_key(epoch)
        counters = np.asarray(indices, dtype=np.uint64) \
            * np.uint64(DRAWS_PER_AUGMENTATION * len(self.choices))
        out = images   # each augmentation returns a new array
        for slot, choice in enumerate(self.choices):
            first = counters + np.uint64(DRAWS_PER_AUGMENTATION * slot)
            draws = [dropout_bits(key, first + np.uint64(d))
                     for d in range(DRAWS_PER_AUGMENTATION)]
            out = APPLY[choice.name](out, choice.args, draws)
        return out


def augmenter_for(config, binding, ranks=None) -> Augmenter | None:
    """The Augmenter of `config.augment` for this model's image input, None without
    augmentations; a one-line UsageError when the model has no image input to augment."""
    if not config.augment:
        return None
    listed = ", ".join(c.name for c in config.augment)
    name = binding.data_input
    if name is None:
        raise UsageError(f"`augment {listed}` changes the images of one data input, and this "
                         f"model has {len(binding.data_inputs)}")
    shape, is_float = binding.inputs[name]
    if len(shape) != 3 or not is_float:
        kind = "" if is_float else "int32"
        raise UsageError(f"`augment {listed}` moves and flips images, and input `{name}` is "
                         f"{kind}[{', '.join(map(str, shape))}], not an image [H, W, C]")
    if ranks is not None:
        raise UsageError(f"`augment {listed}` with several processes is pending: train in one")
    return Augmenter(config.augment, name, config.seed)


class AugmentedBatches:
    """An epoch's batches taken from host arrays, the image input augmented (the batch
    source the trainer uses when the train section sets `augment`)."""

    def __init__(self, arrays: dict, augmenter: Augmenter, current_epoch):
        self.arrays = arrays
        self.augmenter = augmenter
        self.current_epoch = current_epoch   # a function: the epoch being trained (from 0)

    def epoch(self, order: list):
        """A function of the step number in the epoch that returns that step's batch."""
        epoch = self.current_epoch()
        name = self.augmenter.input_name

        def take(i: int) -> dict:
            feeds = take_examples(self.arrays, order[i])
            feeds[name] = self.augmenter.apply(feeds[name], order[i], epoch)
            return feeds
        return take


def _below(bits: np.ndarray, n: int) -> np.ndarray:
    """Integers uniform in 0..n-1 from 64 random bits (the high 32, scaled)."""
    return ((bits >> np.uint64(32)) * np.uint64(n) >> np.uint64(32)).astype(np.int64)


def _move(images: np.ndarray, limit: int, draws, mode: str) -> np.ndarray:
    """Each image moved by dy, dx uniform in -limit..limit: the image padded by `limit` (with
    zeros, or repeating the edge) and a window of its size taken at 0..2·limit."""
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode=mode)
    top, left = _below(draws[0], 2 * limit + 1), _below(draws[1], 2 * limit + 1)
    out = np.empty_like(images)
    # A slice per image: a copy of contiguous rows, several times faster than one gather of
    # the whole batch with index arrays.
    for i in range(n):
        out[i] = padded[i, top[i]:top[i] + height, left[i]:left[i] + width]
    return out


def _crop(images, args, draws):
    return _move(images, args["padding"], draws, "constant")


def _shift(images, args, draws):
    return _move(images, args["pixels"], draws, "edge")


def _flip(images, args, draws):
    # 53 random bits as a float in [0, 1), compared with the probability.
    chosen = (draws[0] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < args["p"]
    out = images.copy()
    out[chosen] = images[chosen][:, :, ::-1]
    return out


# Each augmentation of netlang.lower.train_section.AUGMENTATIONS, by name: fn(images, args,
# draws) → augmented images.
APPLY = {"crop": _crop, "flip": _flip, "shift": _shift}
