"""ONNX export and import of the normalisation family (norm.py): BatchNormalization in
inference form, LRN, and Dropout, the identity at inference.  Here and not in norm.py only to
keep that module short enough to read."""

from __future__ import annotations

import numpy as np

from netlang.ops.norm import batchnorm, dropout, lrn
from netlang.ops.onnx_forms import channels_first_perm, laid_out, passthrough, read_identity
from netlang.ops.registry import reads_onnx

# ---- ONNX export ------------------------------------------------------------------------------


def _onnx_batchnorm(step):
    # Evaluation form: the running statistics, ONNX's BatchNormalization in inference mode,
    # whose channels are axis 1 (channels first for an image or a sequence).
    rank = step.in_types[0].rank
    perm = channels_first_perm(rank) if rank > 2 else None
    x = step.input(0, perm)
    y = step.node("BatchNormalization", [x] + [step.input(i) for i in range(1, 5)],
                  epsilon=step.attrs["eps"])
    return laid_out(y, perm)


def _onnx_lrn(step):
    size = step.attrs["size"]
    if step.in_types[0].rank != 4:
        step.refuse("ONNX's LRN normalises images only, (H, W, C) per example")
    if size % 2 == 0:
        # ONNX centres an even window one channel later than PyTorch (and netlang) do.
        step.refuse(f"an even window ({size} channels) is placed differently by ONNX's LRN; "
                    f"use an odd size")
    a = step.attrs
    y = step.node("LRN", [step.channels_first(0)], size=size, alpha=a["alpha"], beta=a["beta"],
                  bias=a["k"])
    return laid_out(y, channels_first_perm(4))


batchnorm.onnx_rule = _onnx_batchnorm
lrn.onnx_rule = _onnx_lrn
dropout.onnx_rule = passthrough   # inference: dropout is the identity


# ---- ONNX import ------------------------------------------------------------------------------


@reads_onnx("BatchNormalization", channels_first=True)
def _read_batchnorm(step):
    if step.attr("training_mode", 0):
        step.refuse("training_mode = 1: netlang reads the inference form (running statistics)")
    rank = step.rank(0)
    perm = channels_first_perm(rank) if rank > 2 else None
    weights = {name: step.weight(i, name).astype(np.float32)
               for i, name in enumerate(("weight", "bias", "running_mean", "running_var"), 1)}
    # ONNX's momentum keeps that much of the running statistic; PyTorch's (netlang's) takes
    # that much of the batch's.
    momentum = round(1.0 - step.attr("momentum", 0.9), 7)
    layer = step.layer("batchnorm", {"eps": step.attr("epsilon", 1e-5), "momentum": momentum},
                       [step.input(0, perm)], weights, name_from=1)
    return step.result(layer, perm)


@reads_onnx("LRN", channels_first=True)
def _read_lrn(step):
    if step.rank(0) != 4:
        step.refuse("netlang's lrn normalises images only, (N, C, H, W) in ONNX")
    size = step.attr("size")
    if size % 2 == 0:
        step.refuse(f"an even window ({size} channels) is centred differently by netlang's lrn")
    args = {"size": size, "alpha": step.attr("alpha", 1e-4), "beta": step.attr("beta", 0.75),
            "k": step.attr("bias", 1.0)}
    layer = step.layer("lrn", args, [step.input(0, channels_first_perm(4))])
    return step.result(layer, channels_first_perm(4))


reads_onnx("Dropout")(read_identity)
