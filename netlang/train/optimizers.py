"""Optimiser update rules on NumPy arrays, in place, with their state.

The rules follow PyTorch's definitions (torch.optim) so a model trained here
and there takes the same steps; the names and hyper-parameters are those of
`netlang.ops.optim`.  Penalties (L1, L2, elastic net) are added to each
gradient before the update, as the derivative of `λ R(W)`.
"""

from __future__ import annotations

import numpy as np

from netlang.ir.train_config import Choice


def regularizer_gradient(choices, layer: str, penalised: bool, weight: np.ndarray):
    """The penalty's gradient for one parameter, or None.

    `penalised` comes from the parameter (its op's ParamSpec): biases and norm scales are not."""
    if not penalised:
        return None
    total = None
    for choice in choices:
        if choice.layers and layer not in choice.layers:
            continue
        a = choice.args
        if choice.name == "l2":
            term = 2 * a["strength"] * weight
        elif choice.name == "l1":
            term = a["strength"] * np.sign(weight)
        else:  # elastic_net
            term = a["l1"] * np.sign(weight) + 2 * a["l2"] * weight
        total = term if total is None else total + term
    return total


class Optimizer:
    """One optimiser over named parameters; `state` holds its moments by name."""

    def __init__(self, choice: Choice, params: dict):
        self.name = choice.name
        self.args = dict(choice.args)
        self.steps = 0
        self.state: dict[str, np.ndarray] = {}
        slots = {"sgd": ("velocity",) if self.args.get("momentum") else (),
                 "adagrad": ("sum",), "rmsprop": ("square_avg", "momentum_buffer"),
                 "adam": ("m", "v"), "adamw": ("m", "v")}[self.name]
        for pname, value in params.items():
            for slot in slots:
                self.state[f"{pname}.{slot}"] = np.zeros_like(value)

    def step(self, params: dict, grads: dict, lr: float) -> None:
        self.steps += 1
        for name, grad in grads.items():
            if grad is not None:
                getattr(self, f"_{self.name}")(name, params[name], grad, lr)

    def _sgd(self, name, w, g, lr):
        a = self.args
        if a["weight_decay"]:
            g = g + a["weight_decay"] * w
        if a["momentum"]:
            v = self.state[f"{name}.velocity"]
            if self.steps == 1:
                v[...] = g
            else:
                v *= a["momentum"]
                v += (1 - a["dampening"]) * g
            g = g + a["momentum"] * v if a["nesterov"] else v
        w -= lr * g

    def _adagrad(self, name, w, g, lr):
        a = self.args
        if a["weight_decay"]:
            g = g + a["weight_decay"] * w
        s = self.state[f"{name}.sum"]
        s += g * g
        w -= lr * g / (np.sqrt(s) + a["eps"])

    def _rmsprop(self, name, w, g, lr):
        a = self.args
        if a["weight_decay"]:
            g = g + a["weight_decay"] * w
        sq = self.state[f"{name}.square_avg"]
        sq *= a["alpha"]
        sq += (1 - a["alpha"]) * g * g
        step = g / (np.sqrt(sq) + a["eps"])
        if a["momentum"]:
            buf = self.state[f"{name}.momentum_buffer"]
            buf *= a["momentum"]
            buf += step
            step = buf
        w -= lr * step

    def _adam(self, name, w, g, lr, decoupled=False):
        a = self.args
        if a["weight_decay"]:
            if decoupled:
                w *= 1 - lr * a["weight_decay"]
            else:
                g = g + a["weight_decay"] * w
        m, v = self.state[f"{name}.m"], self.state[f"{name}.v"]
        m *= a["beta1"]
        m += (1 - a["beta1"]) * g
        v *= a["beta2"]
        v += (1 - a["beta2"]) * g * g
        m_hat = m / (1 - a["beta1"] ** self.steps)
        v_hat = v / (1 - a["beta2"] ** self.steps)
        w -= (lr * m_hat / (np.sqrt(v_hat) + a["eps"])).astype(w.dtype)

    def _adamw(self, name, w, g, lr):
        self._adam(name, w, g, lr, decoupled=True)
