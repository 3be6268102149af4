"""Optimisers, weight penalties and learning-rate schedules, each defined once.

An optimiser is one `OptimizerDef`, read top to bottom below: its argument schema
(which the `train` section, the CLI's overrides and the training loop all check),
the state it keeps per parameter, its reference step on NumPy arrays (the NumPy
engine runs it, and every back end is tested step for step against it), its
update template (the body of one loop over a parameter, rendered into the
compiled training step by the CPU code generator and, inside a kernel, by the
CUDA one) and, where it has one, the rule by which a weight gradient's matrix
product performs the update itself.  A regulariser (`RegularizerDef`) likewise
holds its schema, its gradient on arrays and its template lines.  Schedules have
only their schema here; the rate they give is computed by the training loop
(netlang/train/schedules.py).

The rules follow PyTorch's definitions (torch.optim), so a model trained here and
there takes the same steps.  Penalties (L1, L2, elastic net) are added to each
gradient before the update, as the derivative of `λ R(W)`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from netlang.ir.train_config import Choice
from netlang.ops.schema import Arg, BOOL, FLOAT, INT


@dataclasses.dataclass
class Configurable:
    """A named choice of the train section (optimizer, schedule, regularizer) and its schema."""

    name: str
    kind: str  # optimizer, schedule, regularizer
    args: tuple
    doc: str


@dataclasses.dataclass
class OptimizerDef(Configurable):
    """One optimiser, its parts side by side; the decorators below attach them."""

    # fn(args) -> the names of the arrays the optimiser keeps per parameter (each shaped like it).
    state_slots: Callable = lambda args: ()
    # fn(args, state, w, g, lr, t): one step on NumPy arrays, in place; `state` maps each slot
    # to its array and `t` counts the steps from 1.
    reference_step: Callable | None = None
    # fn(args, c, names) -> (lines before the loop, lines in the loop): the update as the body
    # of one loop over a parameter, for the CPU and the CUDA renderer alike.  `c` is the
    # renderer's spelling (netlang/codegen/spelling.py: `c(0.5)` a constant, `c.sqrt(x)` a
    # math function); `names` holds the loop's variables:
    # `p` (the parameter, flat) and each state slot's flat array.  In the loop `i` is the
    # element, `gi` its gradient (penalties and clipping applied), `lr` the rate and `t` the
    # step number, from 1.
    update_template: Callable | None = None
    # fn(args) -> a GemmUpdate, or None where these arguments need the gradient itself.
    gemm_update: Callable | None = None

    def reference(self, fn):
        """Attaches the reference step."""
        self.reference_step = fn
        return fn

    def template(self, fn):
        """Attaches the update template."""
        self.update_template = fn
        return fn

    def absorb(self, fn):
        """Attaches the rule for updates a weight gradient's matrix product performs itself."""
        self.gemm_update = fn
        return fn


@dataclasses.dataclass
class RegularizerDef(Configurable):
    """One weight penalty: its gradient on arrays and as template lines."""

    # fn(args, w) -> the penalty's gradient for the weight array w.
    gradient_rule: Callable | None = None
    # fn(args, c, p) -> lines adding the penalty's gradient for element `i` of `p` to `gi`.
    template_rule: Callable | None = None

    def gradient(self, fn):
        """Attaches the gradient on arrays."""
        self.gradient_rule = fn
        return fn

    def template(self, fn):
        """Attaches the template lines."""
        self.template_rule = fn
        return fn


# An update that the weight gradient's matrix product can perform itself, through gemm's
# C ← α·A·B + β·C: `target` is the array the product accumulates into ("param" or a state
# slot), `first`/`later` the (α, β) source for step 1 and later steps, `after` the loop body
# that finishes the update (may be empty).  Plain SGD needs no second pass at all.
@dataclasses.dataclass(frozen=True)
class GemmUpdate:
    """How a gemm performs an optimiser's update (see the comment above)."""

    target: str
    first: tuple
    later: tuple
    after: tuple


OPTIMIZERS: dict[str, OptimizerDef] = {}
SCHEDULES: dict[str, Configurable] = {}
REGULARIZERS: dict[str, RegularizerDef] = {}


def _optimizer(name, doc, args, state_slots) -> OptimizerDef:
    OPTIMIZERS[name] = OptimizerDef(name, "optimizer", tuple(args), doc, state_slots)
    return OPTIMIZERS[name]


def _regularizer(name, doc, args) -> RegularizerDef:
    REGULARIZERS[name] = RegularizerDef(name, "regularizer", tuple(args), doc)
    return REGULARIZERS[name]


def _schedule(name, doc, args) -> None:
    SCHEDULES[name] = Configurable(name, "schedule", tuple(args), doc)


_LR = Arg("lr", FLOAT, 0.01, min=0.0, exclusive_min=True, doc="learning rate")
_WD = Arg("weight_decay", FLOAT, 0.0, min=0.0, doc="L2 penalty added to the gradient (coupled)")


# ---- sgd -----------------------------------------------------------------------------------------

sgd = _optimizer(
    "sgd", "Gradient descent w ← w − lr·g, with optional (Nesterov) momentum as in PyTorch.",
    [_LR, Arg("momentum", FLOAT, 0.0, min=0.0, max=1.0), Arg("nesterov", BOOL, False),
     Arg("dampening", FLOAT, 0.0, min=0.0, max=1.0), _WD],
    lambda a: ("velocity",) if a["momentum"] else ())


@sgd.reference
def _sgd_step(a, state, w, g, lr, t):
    if a["weight_decay"]:
        g = g + a["weight_decay"] * w
    if a["momentum"]:
        v = state["velocity"]
        if t == 1:
            v[...] = g
        else:
            v *= a["momentum"]
            v += (1 - a["dampening"]) * g
        g = g + a["momentum"] * v if a["nesterov"] else v
    w -= lr * g


@sgd.template
def _sgd_update(a, c, v):
    body = []
    if a["weight_decay"]:
        body.append(f"gi += {c(a['weight_decay'])} * {v['p']}[i]")
    if a["momentum"]:
        vel = v["velocity"]
        body += ["if t == 1:", f"    {vel}[i] = gi", "else:",
                 f"    {vel}[i] = {c(a['momentum'])} * {vel}[i] + {c(1 - a['dampening'])} * gi"]
        body.append(f"gi = gi + {c(a['momentum'])} * {vel}[i]" if a["nesterov"] else f"gi = {vel}[i]")
    body.append(f"{v['p']}[i] -= lr * gi")
    return [], body


@sgd.absorb
def _sgd_absorb(a):
    if a["weight_decay"] or a["nesterov"]:
        return None
    if not a["momentum"]:
        return GemmUpdate("param", ("-lr", "1.0"), ("-lr", "1.0"), ())
    return GemmUpdate("velocity", ("1.0", "0.0"), (repr(1 - a["dampening"]), repr(a["momentum"])),
                      ("{p}[i] -= lr * {velocity}[i]",))


# ---- adagrad -------------------------------------------------------------------------------------

adagrad = _optimizer(
    "adagrad", "Per-weight rates scaled by the root of the summed squared gradients.",
    [_LR, Arg("eps", FLOAT, 1e-10, min=0.0, exclusive_min=True), _WD],
    lambda a: ("sum",))


@adagrad.reference
def _adagrad_step(a, state, w, g, lr, t):
    if a["weight_decay"]:
        g = g + a["weight_decay"] * w
    s = state["sum"]
    s += g * g
    w -= lr * g / (np.sqrt(s) + a["eps"])


@adagrad.template
def _adagrad_update(a, c, v):
    body = []
    if a["weight_decay"]:
        body.append(f"gi += {c(a['weight_decay'])} * {v['p']}[i]")
    body += [f"{v['sum']}[i] += gi * gi",
             f"{v['p']}[i] -= lr * gi / ({c.sqrt(v['sum'] + '[i]')} + {c(a['eps'])})"]
    return [], body


# ---- rmsprop -------------------------------------------------------------------------------------

rmsprop = _optimizer(
    "rmsprop", "Per-weight rates scaled by a running root mean square of the gradients.",
    [dataclasses.replace(_LR, default=0.01), Arg("alpha", FLOAT, 0.99, min=0.0, max=1.0),
     Arg("eps", FLOAT, 1e-8, min=0.0, exclusive_min=True),
     Arg("momentum", FLOAT, 0.0, min=0.0, max=1.0), _WD],
    lambda a: ("square_avg", "momentum_buffer"))


@rmsprop.reference
def _rmsprop_step(a, state, w, g, lr, t):
    if a["weight_decay"]:
        g = g + a["weight_decay"] * w
    sq = state["square_avg"]
    sq *= a["alpha"]
    sq += (1 - a["alpha"]) * g * g
    step = g / (np.sqrt(sq) + a["eps"])
    if a["momentum"]:
        buf = state["momentum_buffer"]
        buf *= a["momentum"]
        buf += step
        step = buf
    w -= lr * step


@rmsprop.template
def _rmsprop_update(a, c, v):
    body = []
    if a["weight_decay"]:
        body.append(f"gi += {c(a['weight_decay'])} * {v['p']}[i]")
    sq = v["square_avg"]
    body += [f"{sq}[i] = {c(a['alpha'])} * {sq}[i] + {c(1 - a['alpha'])} * gi * gi",
             f"gi = gi / ({c.sqrt(sq + '[i]')} + {c(a['eps'])})"]
    if a["momentum"]:
        buf = v["momentum_buffer"]
        body += [f"{buf}[i] = {c(a['momentum'])} * {buf}[i] + gi", f"gi = {buf}[i]"]
    body.append(f"{v['p']}[i] -= lr * gi")
    return [], body


# ---- adam and adamw: one rule, the weight decay coupled (adam) or decoupled (adamw) --------------

_ADAM_ARGS = [dataclasses.replace(_LR, default=0.001),
              Arg("beta1", FLOAT, 0.9, min=0.0, max=1.0),
              Arg("beta2", FLOAT, 0.999, min=0.0, max=1.0),
              Arg("eps", FLOAT, 1e-8, min=0.0, exclusive_min=True)]
adam = _optimizer("adam", "Adaptive moments (Kingma & Ba), bias-corrected.",
                  _ADAM_ARGS + [_WD], lambda a: ("m", "v"))
adamw = _optimizer("adamw", "Adam with decoupled weight decay (Loshchilov & Hutter).",
                   _ADAM_ARGS + [Arg("weight_decay", FLOAT, 0.01, min=0.0)], lambda a: ("m", "v"))


def _adam_step(decoupled):
    def step(a, state, w, g, lr, t):
        # PyTorch's arrangement, in the parameter's precision: the bias corrections fold into a
        # step size and a divisor of the root, each computed once in float64.
        real = w.dtype.type
        if a["weight_decay"]:
            if decoupled:
                w *= real(1 - lr * a["weight_decay"])
            else:
                g = g + real(a["weight_decay"]) * w
        m, v = state["m"], state["v"]
        m *= a["beta1"]
        m += (1 - a["beta1"]) * g
        v *= a["beta2"]
        v += (1 - a["beta2"]) * g * g
        step_size = real(lr / (1 - a["beta1"] ** t))
        root_bc2 = real(np.sqrt(1 - a["beta2"] ** t))
        w -= step_size * (m / (np.sqrt(v) / root_bc2 + real(a["eps"])))
    return step


def _adam_update(decoupled):
    def template(a, c, v):
        m, s, p = v["m"], v["v"], v["p"]
        beta1, beta2, decay = a["beta1"], a["beta2"], a["weight_decay"]
        # As the reference: every element's arithmetic in the parameter's type `F` (float64
        # would halve the vector width), with divisions that let the loop vectorise.
        prologue = [f"step_size = F(lr / (1.0 - {beta1!r} ** t))",
                    f"root_bc2 = F({c.sqrt(f'1.0 - {beta2!r} ** t')})"]
        body = []
        if decay and decoupled:
            prologue.append(f"shrink = F(1.0 - lr * {decay!r})")
            body.append(f"{p}[i] *= shrink")
        elif decay:
            body.append(f"gi += {c(decay)} * {p}[i]")
        denominator = f"{c.divide(c.sqrt(f'{s}[i]'), 'root_bc2')} + {c(a['eps'])}"
        body += [f"{m}[i] = {c(beta1)} * {m}[i] + {c(1 - beta1)} * gi",
                 f"{s}[i] = {c(beta2)} * {s}[i] + {c(1 - beta2)} * gi * gi",
                 f"{p}[i] -= step_size * {c.divide(f'{m}[i]', denominator)}"]
        return prologue, body
    return template


adam.reference(_adam_step(decoupled=False))
adam.template(_adam_update(decoupled=False))
adamw.reference(_adam_step(decoupled=True))
adamw.template(_adam_update(decoupled=True))


# ---- regularizers --------------------------------------------------------------------------------

l2 = _regularizer("l2", "Adds `strength · Σ w²` to the loss.", [Arg("strength", FLOAT, min=0.0)])
l2.gradient(lambda a, w: 2 * a["strength"] * w)
l2.template(lambda a, c, p: [f"gi += {c(2 * a['strength'])} * {p}[i]"] if a["strength"] else [])

l1 = _regularizer("l1", "Adds `strength · Σ |w|` to the loss.", [Arg("strength", FLOAT, min=0.0)])
l1.gradient(lambda a, w: a["strength"] * np.sign(w))
l1.template(lambda a, c, p:
            [f"gi += {c(a['strength'])} * {c.sign(p + '[i]')}"] if a["strength"] else [])

elastic_net = _regularizer("elastic_net", "Adds `l1 · Σ |w| + l2 · Σ w²` to the loss.",
                           [Arg("l1", FLOAT, min=0.0), Arg("l2", FLOAT, min=0.0)])
elastic_net.gradient(lambda a, w: a["l1"] * np.sign(w) + 2 * a["l2"] * w)
elastic_net.template(lambda a, c, p: (l2.template_rule({"strength": a["l2"]}, c, p)
                                      + l1.template_rule({"strength": a["l1"]}, c, p)))


def _applying(choices, layer: str, penalised: bool):
    """The regularizer choices that apply to a parameter of `layer`; `penalised` comes from the
    parameter (its op's ParamSpec): biases and norm scales are not."""
    if not penalised:
        return []
    return [choice for choice in choices if not choice.layers or layer in choice.layers]


def regularizer_gradient(choices, layer: str, penalised: bool, weight: np.ndarray):
    """The penalties' gradient for one parameter, or None where none applies."""
    total = None
    for choice in _applying(choices, layer, penalised):
        term = REGULARIZERS[choice.name].gradient_rule(choice.args, weight)
        total = term if total is None else total + term
    return total


def cpu_penalty(choices, layer: str, penalised: bool, c, p: str) -> list[str]:
    """Lines adding the penalties' gradient for one weight element to `gi` (none: no penalty)."""
    lines = []
    for choice in _applying(choices, layer, penalised):
        lines += REGULARIZERS[choice.name].template_rule(choice.args, c, p)
    return lines


# ---- schedules (the rates they give: netlang/train/schedules.py) ---------------------------------

_schedule("constant", "The learning rate stays fixed.", [])
_schedule("step", "Multiply the rate by `gamma` every `every` epochs.",
          [Arg("every", INT, min=1), Arg("gamma", FLOAT, 0.1, min=0.0)])
_schedule("exponential", "Multiply the rate by `gamma` after every epoch.",
          [Arg("gamma", FLOAT, min=0.0)])
_schedule("cosine", "Cosine decay from the base rate to `min_lr` over the run.",
          [Arg("min_lr", FLOAT, 0.0, min=0.0),
           Arg("warmup", INT, 0, min=0, doc="linear warm-up epochs")])
_schedule("warmup", "Linear warm-up from 0 over `epochs` epochs, then the base rate.",
          [Arg("epochs", INT, min=1)])


# ---- the state one optimiser keeps while it trains a model ---------------------------------------

class Optimizer:
    """One optimiser over named parameters: its state arrays by `param.slot`, and the number
    of steps taken; `step` applies the reference rule (the NumPy engine's update)."""

    def __init__(self, choice: Choice, params: dict):
        self.name = choice.name
        self.args = dict(choice.args)
        self.steps = 0
        self.definition = OPTIMIZERS[self.name]
        self.slots = self.definition.state_slots(self.args)
        self.state: dict[str, np.ndarray] = {}
        for pname, value in params.items():
            for slot in self.slots:
                self.state[f"{pname}.{slot}"] = np.zeros_like(value)

    def step(self, params: dict, grads: dict, lr: float) -> None:
        """One step of every parameter with a gradient (None: frozen or unused), in place."""
        self.steps += 1
        for name, grad in grads.items():
            if grad is not None:
                state = {slot: self.state[f"{name}.{slot}"] for slot in self.slots}
                self.definition.reference_step(self.args, state, params[name], grad, lr,
                                               self.steps)
