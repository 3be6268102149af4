"""Losses as expressions: weighted terms, `kl_normal`, terms written as tensor math.

A `loss` line is split into terms weighted by numbers (negative ones maximise their term);
a term is a loss call or an expression of the model's tensors that is a scalar per example,
averaged over the batch (netlang/lower/loss_terms.py).  Here: how lines split into terms,
the role of the nodes a term lowers, the mistakes refused at their position, the whole
training step's gradients against float64 central differences (reference engine) and against
the CPU engine, training on the CPU engine, `netlang eval --json`, and a VAE objective
(binary cross-entropy + kl_normal, z = mu) against PyTorch on identical weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_gradients import Case, check_gradients, draw_feeds, random_params, unit_interval

import netlang
from netlang.cli import main
from netlang.runtime import make_engine

# A VAE's objective with a deterministic latent (z = mu): no sampling op is needed to check it.
VAE = """
input image: [6]
h = image -> dense(5) -> tanh
mu = h -> dense(3)
logvar = h -> dense(3)
x_hat = mu -> dense(5) -> tanh -> dense(6) -> sigmoid
output x_hat
train {
  loss binary_cross_entropy(x_hat, image) + kl_normal(mu, logvar)
  optimizer adam(lr = 0.01)
  batch_size 8
}
"""

# A discriminator read twice (shared weights) in a GAN's logistic objective, written out.
LOGISTIC = """
input real: [4]
input z: [2]
fake = z -> dense(4) -> tanh
real_score = real -> dense(3) as d1 -> tanh -> dense(1) as d2
fake_score = fake -> dense(3, share = d1) -> tanh -> dense(1, share = d2)
train {
  loss softplus(-real_score) + softplus(fake_score)
  optimizer adam(lr = 0.01)
  batch_size 8
}
"""


def terms(source: str) -> list[tuple[str, float]]:
    """(op, weight) of each loss term of a compiled model, in order."""
    graph = netlang.compile(source).graph
    return [(graph.op(node), weight) for node, weight in graph.graph["losses"]]


MODEL = "input x: [4]\ninput t: [2]\ny = x -> dense(2)\ns = x -> dense(1)\n"


@pytest.mark.parametrize("loss, expected", [
    ("mse(y, t) - 0.1 * kl_normal(y, t)", [("mse", 1.0), ("kl_normal", -0.1)]),
    ("-mse(y, t)", [("mse", -1.0)]),
    ("2 * mse(y, t) + mse(y, t) / 4", [("mse", 2.0), ("mse", 0.25)]),
    ("3 * (mse(y, t) - softplus(s))", [("mse", 3.0), ("batch_mean", -3.0)]),
    ("softplus(-s) + 0.5 * mean(square(y - t), axis = 0)",
     [("batch_mean", 1.0), ("batch_mean", 0.5)]),
    ("sum(y * t, axis = 0) / -2", [("batch_mean", -0.5)]),
    ("sum(y, axis = 0) * sum(t, axis = 0)", [("batch_mean", 1.0)]),   # one term: a product
    ("0 * mse(y, t) + softplus(s)", [("mse", 0.0), ("batch_mean", 1.0)]),
])
def test_a_loss_line_splits_into_weighted_terms(loss, expected):
    assert terms(MODEL + f"train {{ loss {loss} }}\n") == expected


def test_the_nodes_of_an_expression_term_belong_to_the_loss():
    """They are not default outputs, and an input only they read is a target."""
    model = netlang.compile("input x: [4]\ninput w: [1]\ns = x -> dense(1)\n"
                            "train { loss softplus(-s * w) }\n")
    graph = model.graph
    assert list(graph.graph["outputs"]) == ["s"]
    assert {graph.nodes[n]["role"] for n in graph.successors(graph.node_named("s"))} == {"loss"}
    assert model.binding.data_inputs == ("x",) and model.binding.label_inputs == ("w",)


@pytest.mark.parametrize("loss, message, column", [
    ("softplus(s) + square(y)", "a loss term must be a scalar per example (shape [] or [1]), "
                                "but this one has shape [2]", 22),
    ("mse(y, t) * kl_normal(y, t)", "a loss can be scaled by a number, not multiplied by "
                                    "another loss", 18),
    ("s * mse(y, t)", "a loss weight must be a number, not the tensor", 8),
    ("2", "this loss term is 2, not computed from the model's tensors", 8),
    ("mse(y, t) + 1", "this loss term is 1, not computed from the model's tensors", 20),
    ("exp(mse(y, t))", "`mse` is a loss: losses are weighted by numbers and added", 12),
    ("kl_norm(y, t)", "unknown loss `kl_norm` (did you mean `kl_normal`?)", 8),
    ("kl_normal(y)", "`kl_normal` takes 2 tensors: `kl_normal(mu, logvar)`", 8),
    ("kl_normal(y, s)", "`kl_normal` needs `mu` and `logvar` of one shape", 8),
    ("mse(y, t) / 0", "division by zero", 20),
    ("1e300 * (1e300 * mse(y, t))", "the weights of this loss multiply to a number too large",
     8),
    ("0 * mse(y, t)", "every loss term has weight 0: training would change nothing", 3),
    ("mse(y, t) + sum(t, axis = 0)", "this loss term depends on no parameter of the model", 20),
])
def test_mistakes_are_one_line_errors_at_the_term(loss, message, column):
    with pytest.raises(netlang.NetlangError) as caught:
        netlang.compile(MODEL + f"train {{\n  loss {loss}\n}}\n", path="m.net")
    first = caught.value.render().splitlines()[0]
    assert first.startswith(f"m.net:6:{column}: error: {message}"), first


def test_each_term_reports_its_own_mistake():
    with pytest.raises(netlang.NetlangError) as caught:
        netlang.compile(MODEL + "train {\n  loss square(y) + mse(y, t) + \"a\" * mse(y, t)\n}\n",
                        path="m.net")
    headers = [line for line in caught.value.render().splitlines() if ": error: " in line]
    assert [h.split(": error:")[0] for h in headers] == ["m.net:6:8", "m.net:6:32"]


@pytest.mark.parametrize("case", [
    Case("vae_deterministic_latent", VAE, batch=4, draw={"image": unit_interval}),
    Case("logistic_shared_discriminator", LOGISTIC, batch=4),
    Case("negative_and_zero_weights", MODEL + "train { loss mse(y, t) - 0.5 * softplus(s) "
                                              "+ 0 * mean(y * t, axis = 0) }\n", batch=3),
], ids=lambda case: case.id)
def test_training_step_gradients_match_central_differences(case):
    """The whole step's objective (float64, reference engine) against central differences,
    for every parameter and data input."""
    graph = netlang.compile(case.source).graph
    rng = np.random.default_rng(7)
    check_gradients(graph, draw_feeds(graph, case, rng, case.batch), random_params(graph, rng),
                    case.id)


def _feeds_vae(n, seed=0):
    return {"image": np.random.default_rng(seed).uniform(0.05, 0.95, (n, 6))}


def _feeds_logistic(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"real": rng.normal(1.0, 0.5, (n, 4)), "z": rng.normal(size=(n, 2))}


@pytest.mark.parametrize("source, feeds", [(VAE, _feeds_vae), (LOGISTIC, _feeds_logistic)],
                         ids=["vae", "logistic"])
def test_cpu_engine_matches_the_reference_and_trains(source, feeds):
    """Fusion, memory planning and the kernels of batch_mean and kl_normal on the CPU engine:
    its float64 gradients are the reference's, and training lowers the loss."""
    graph = netlang.compile(source).graph
    params = random_params(graph, np.random.default_rng(3))
    batch = {k: v for k, v in feeds(8).items()}
    reference = make_engine(graph, params={k: v.copy() for k, v in params.items()},
                            device="reference", dtype=np.float64)
    cpu = make_engine(graph, params={k: v.copy() for k, v in params.items()}, device="cpu",
                      dtype=np.float64)
    ref_loss, ref_grads, _ = reference.gradients(batch)
    cpu_loss, cpu_grads, _ = cpu.gradients(batch)
    assert cpu_loss == pytest.approx(ref_loss, rel=1e-12)
    for name, grad in ref_grads.items():
        np.testing.assert_allclose(cpu_grads[name], grad, rtol=1e-10, atol=1e-12, err_msg=name)

    model = netlang.compile(source).to("cpu")
    history = model.fit({k: v.astype(np.float32) for k, v in feeds(64, seed=1).items()},
                        epochs=12, verbose=0)
    losses = [record["loss"] for record in history.records]
    # The VAE cannot go below the entropy of its soft targets (about 3.5 nats here).
    assert losses[-1] < 0.95 * losses[0] and losses[-1] == min(losses), losses


def test_eval_json_reports_the_weighted_sum(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, image_train=rng.uniform(0, 1, (16, 6)).astype(np.float32),
             image_test=rng.uniform(0, 1, (8, 6)).astype(np.float32))
    source = tmp_path / "vae.net"
    source.write_text(VAE.replace("kl_normal(mu, logvar)", "0.5 * kl_normal(mu, logvar)"))
    out = tmp_path / "run"
    assert main(["train", str(source), "--data", str(data), "--epochs", "2", "--device",
                 "reference", "--out", str(out), "-q"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    capsys.readouterr()
    assert main(["eval", str(source), "--weights", str(out), "--device", "reference",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    model = netlang.compile(str(source)).to("reference")
    model.load_weights(str(out))
    image = np.load(data)["image_test"]
    loss, _, _ = model.gradients({"image": image}, mode="eval")
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["heads"]["x_hat"]["op"] == "binary_cross_entropy"


def test_vae_objective_matches_torch():
    """binary cross-entropy summed over pixels + kl_normal, each averaged over the batch,
    and every gradient, against PyTorch on the same weights (float64)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    F = torch.nn.functional
    model = netlang.compile(VAE, dtype="float64").to("reference")
    params = random_params(model.graph, np.random.default_rng(5))
    for name, value in model.parameters().items():
        value[...] = params[name]
    image = _feeds_vae(7, seed=2)["image"]
    loss, grads, _ = model.gradients({"image": image})

    weights = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}

    def dense(x, layer):
        return F.linear(x, weights[f"{layer}.weight"], weights[f"{layer}.bias"])
    x = torch.tensor(image)
    h = torch.tanh(dense(x, "dense_1"))
    mu, logvar = dense(h, "mu"), dense(h, "logvar")
    x_hat = torch.sigmoid(dense(torch.tanh(dense(mu, "dense_2")), "dense_3"))
    bce = F.binary_cross_entropy(x_hat, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    objective = (bce + kld) / x.shape[0]
    objective.backward()
    assert loss == pytest.approx(objective.item(), rel=1e-12)
    for name, tensor in weights.items():
        np.testing.assert_allclose(grads[name], tensor.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_kl_normal_equals_the_expression_written_out():
    """`kl_normal(mu, logvar)` and the KL term written with tensor math (as docs/language.md
    shows it): one value, one gradient."""
    written = VAE.replace("kl_normal(mu, logvar)",
                          "-0.5 * sum(1 + logvar - square(mu) - exp(logvar), axis = 0)")
    built_in = netlang.compile(VAE, dtype="float64").to("reference")
    by_hand = netlang.compile(written, dtype="float64").to("reference")
    params = random_params(built_in.graph, np.random.default_rng(9))
    for model in (built_in, by_hand):
        for name, value in model.parameters().items():
            value[...] = params[name]
    feeds = _feeds_vae(5, seed=4)
    expected, expected_grads, _ = built_in.gradients(feeds)
    loss, grads, _ = by_hand.gradients(feeds)
    assert loss == pytest.approx(expected, rel=1e-12)
    for name, grad in expected_grads.items():
        np.testing.assert_allclose(grads[name], grad, rtol=1e-10, atol=1e-14, err_msg=name)
