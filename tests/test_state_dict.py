"""PyTorch state dicts both ways (`netlang.weights_to_state_dict`, `netlang.from_state_dict`):
names and layouts against torch modules built here (torch 2.13.0 CPU; skipped without it),
and torchvision's ResNet-18 layout loaded into examples/resnet18.net with the same logits."""

from __future__ import annotations

import re

import numpy as np
import pytest

import netlang

torch = pytest.importorskip("torch", reason="the state dicts are checked against torch modules")
nn = torch.nn


def _tensors(state: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def _randomise(module, seed=0):
    """Weights and running statistics away from their initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.rand(tensor.shape, generator=generator)
            tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.5)


SMALL = """input x: [8, 8, 3]
input s: [5, 4]
features = x -> conv2d(4, 3, padding = 1) as conv -> batchnorm as bn -> relu -> global_avgpool
memory = s -> lstm(6, layers = 2, bidirectional = true) as rnn
output y = (features, memory) -> concat -> dense(5) as fc
"""


class Small(nn.Module):
    """SMALL in torch, module by module under the same names."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.rnn = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x, s):
        features = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        _, (h, _) = self.rnn(s)
        return self.fc(torch.cat([features, h[-2], h[-1]], dim=1))


def _small_inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 8, 8, 3)).astype(np.float32), \
        rng.standard_normal((2, 5, 4)).astype(np.float32)


def _torch_logits(module, x, s):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                      torch.from_numpy(s)).numpy()


def test_netlang_weights_load_strictly_into_torch_and_agree():
    model = netlang.compile(SMALL).to("reference")
    for buffer in model.buffers().values():
        buffer[...] = np.random.default_rng(1).uniform(0.5, 1.5, buffer.shape)
    state = netlang.weights_to_state_dict(model)
    assert state["bn.num_batches_tracked"].dtype == np.int64
    module = Small().eval()
    module.load_state_dict(_tensors(state), strict=True)
    x, s = _small_inputs()
    np.testing.assert_allclose(_torch_logits(module, x, s), model.forward({"x": x, "s": s})["y"],
                               rtol=1e-5, atol=1e-6)


def test_a_torch_state_dict_loads_into_netlang_and_agrees():
    module = Small().eval()
    _randomise(module)
    model = netlang.compile(SMALL).to("reference")
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    assert netlang.from_state_dict(model, state) is model
    x, s = _small_inputs()
    np.testing.assert_allclose(model.forward({"x": x, "s": s})["y"], _torch_logits(module, x, s),
                               rtol=1e-5, atol=1e-6)


def test_the_state_dict_is_a_copy():
    model = netlang.compile("input x: [3]\noutput y = x -> dense(2) as fc").to("reference")
    state = netlang.weights_to_state_dict(model)
    state["fc.weight"][...] = 7
    assert not np.any(model.parameters()["fc.weight"] == 7)


def test_unknown_missing_and_misshapen_entries_are_named():
    model = netlang.compile("input x: [3]\noutput y = x -> dense(2) as fc").to("reference")
    good = {"fc.weight": np.zeros((2, 3)), "fc.bias": np.zeros(2)}
    with pytest.raises(netlang.NetlangError, match="name no weight of the model: head.bias"):
        netlang.from_state_dict(model, {**good, "head.bias": np.zeros(2)})
    with pytest.raises(netlang.NetlangError, match="does not fill: fc.bias"):
        netlang.from_state_dict(model, {"fc.weight": np.zeros((2, 3))})
    with pytest.raises(netlang.NetlangError, match=r"`fc.weight` has shape \(3, 2\); netlang's "):
        netlang.from_state_dict(model, {**good, "fc.weight": np.zeros((3, 2))})
    netlang.from_state_dict(model, {"fc.weight": np.ones((2, 3)), "extra": 0}, strict=False)
    assert np.all(model.parameters()["fc.weight"] == 1)


# ---- torchvision's ResNet-18, built here (torchvision is not installed; nothing is downloaded)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with its module names."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision.models.resnet18's structure and state-dict keys."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        cin = 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride),
                                                         BasicBlock(width, width, 1)))
            cin = width
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def torchvision_resnet_names(key: str) -> str:
    """torchvision's ResNet-18 keys as examples/resnet18.net names its layers (the recipe in
    docs/interchange.md): `layer2.0.` is `layer2_0.`, the shortcut's `downsample.0` and
    `downsample.1` are `downsample` and `downsample_bn`."""
    key = re.sub(r"^layer([234])\.(\d)\.", r"layer\1_\2.", key)
    return key.replace("downsample.0.", "downsample.").replace("downsample.1.", "downsample_bn.")


def test_torchvision_resnet18_weights_give_the_same_logits_in_examples_resnet18():
    module = ResNet18().eval()
    _randomise(module, seed=3)
    model = netlang.compile("examples/resnet18.net").to("reference")
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    netlang.from_state_dict(model, state, rename=torchvision_resnet_names)
    image = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(image.transpose(0, 3, 1, 2).copy())).numpy()
    got = model.forward(image)["logits"]
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale
