"""Adam and AdamW step for step against torch.optim, in float32 on both sides.

The update is written as PyTorch writes it (the bias corrections folded into a step size and a
divisor of the root, every element's arithmetic in the parameter's type), so the reference and
the CPU engine follow torch.optim.Adam and AdamW to a few units in the last place: each step,
netlang's own gradients are handed to torch as `.grad`, both sides step, and the weights and
moments are compared (torch updates the first moment by `lerp`, a rounding of its own).
"""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.runtime import make_engine

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

MODEL = """
input x: [6]
input t: [3]
output y = x -> dense(5) as hidden -> tanh -> dense(3) as out
train { loss squared_error(y, t)  optimizer %s }
"""
STEPS = 25
LR = 0.01


@pytest.mark.parametrize("engine_name", ["reference", "cpu"])
@pytest.mark.parametrize("optimizer,torch_optimizer", [
    ("adam(lr = 0.01)", lambda p: torch.optim.Adam(p, lr=LR)),
    ("adam(lr = 0.01, beta1 = 0.5, weight_decay = 0.1)",
     lambda p: torch.optim.Adam(p, lr=LR, betas=(0.5, 0.999), weight_decay=0.1)),
    ("adamw(lr = 0.01, beta2 = 0.99, eps = 1e-6)",
     lambda p: torch.optim.AdamW(p, lr=LR, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)),
])
def test_adam_steps_match_torch(engine_name, optimizer, torch_optimizer):
    model = netlang.compile(MODEL % optimizer)
    engine = make_engine(model.graph, seed=3, device=engine_name)
    names = sorted(engine.params)
    theirs = {name: torch.tensor(engine.params[name].copy(), requires_grad=True) for name in names}
    step = torch_optimizer([theirs[name] for name in names])
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        feeds = {"x": rng.normal(size=(8, 6)).astype(np.float32),
                 "t": rng.normal(size=(8, 3)).astype(np.float32)}
        _, grads, _ = engine.gradients(feeds)
        for name in names:
            theirs[name].grad = torch.tensor(grads[name])
        step.step()
        engine.train_step(feeds, LR)
    for name in names:
        assert engine.params[name].dtype == np.float32
        np.testing.assert_allclose(engine.params[name], theirs[name].detach().numpy(),
                                   rtol=1e-6, atol=1e-7, err_msg=name)
        state = step.state[theirs[name]]
        for slot, key in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            np.testing.assert_allclose(engine.optimizer.state[f"{name}.{slot}"],
                                       state[key].numpy(), rtol=1e-5, atol=1e-9,
                                       err_msg=f"{name}.{slot}")
