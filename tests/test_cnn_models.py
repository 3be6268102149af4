"""The example CNNs on the NumPy reference engine: LeNet-5 trains; AlexNet, ResNet-18 and
GoogLeNet run a full forward and backward pass at batch 1; VGG-16 (138M parameters, ~10 s and
2.6 GB for a float32 backward pass at 224×224) runs forward, and its backward graph is built
and shape-checked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.runtime.reference import ReferenceEngine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def quick_params(graph, seed=0) -> dict:
    """Float32 parameters drawn directly (the init schemes draw float64, slow for 100M+ values):
    weights U(±√(3/fan_in)) (variance 1/fan_in), biases and running means 0, scales and running
    variances 1."""
    rng = np.random.default_rng(seed)
    params = {}
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        if data["role"] not in ("param", "buffer"):
            continue
        attrs = data["attrs"]
        shape = tuple(attrs["shape"])
        if attrs["init"] in ("zeros", "ones"):
            params[data["name"]] = np.full(shape, attrs["init"] == "ones", dtype=np.float32)
        else:
            value = rng.random(shape, dtype=np.float32)
            value -= np.float32(0.5)
            value *= np.float32(2 * math.sqrt(3 / attrs["fan_in"]))
            params[data["name"]] = value
    return params


def image_feeds(graph, batch=1, seed=0):
    shape = graph.type_of(graph.graph["inputs"]["image"]).shape[1:]
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch,) + tuple(shape), dtype=np.float32),
            "label": rng.integers(0, 10, batch)}


def test_lenet5_trains_on_the_reference_engine():
    model = netlang.compile(EXAMPLES / "lenet5.net")
    engine = ReferenceEngine(model.graph, seed=0)   # make_engine picks the CPU engine now
    feeds = image_feeds(model.graph, batch=16, seed=1)
    losses = [engine.train_step(feeds, 0.01)[0] for _ in range(10)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    logits = engine.forward(feeds)["logits"]
    assert logits.shape == (16, 10) and logits.dtype == np.float32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "resnet18", "googlenet"])
def test_example_cnn_forward_and_backward(name):
    model = netlang.compile(EXAMPLES / f"{name}.net")
    engine = ReferenceEngine(model.graph, params=quick_params(model.graph), dtype=np.float32)
    feeds = image_feeds(model.graph)
    loss, grads, outputs = engine.gradients(feeds)
    assert np.isfinite(loss)
    assert outputs["logits"].shape == (1, 1000) and outputs["logits"].dtype == np.float32
    assert set(grads) == set(engine.trainable)
    for param, grad in grads.items():
        assert grad.shape == engine.params[param].shape and grad.dtype == np.float32, param
        assert np.isfinite(grad).all(), param
    # Gradients reach the first convolution through every layer.
    first = next(p for p in engine.trainable if p.endswith("weight"))
    assert np.abs(grads[first]).max() > 0, first


@pytest.mark.slow
def test_vgg16_forward_and_backward_graph():
    model = netlang.compile(EXAMPLES / "vgg16.net")
    engine = ReferenceEngine(model.graph, params=quick_params(model.graph), dtype=np.float32)
    graph, grads, order, _ = engine._training()   # the training graph, differentiated
    for node, grad in grads.of.items():
        assert grad is not None, graph.nodes[node]["name"]
        assert graph.type_of(grad) == graph.type_of(node), graph.nodes[node]["name"]
    assert {graph.op(n) for n in order} >= {"conv2d_grad_input", "conv2d_grad_weight", "maxpool_grad"}
    logits = engine.forward(image_feeds(model.graph))["logits"]
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()
