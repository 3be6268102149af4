"""The `train { ... }` section → loss nodes in the graph and a `TrainConfig`.

Losses become graph nodes (so autodiff sees them; each `loss` line is split into weighted
terms by netlang.lower.loss_terms); everything else is checked
against the schemas in `netlang.ops.optim` and `netlang.ir.train_config`.  The
section is lowered after the network, in the file's top-level scope, so it can
name the network's layers and constants; `netlang.train.overrides` lowers
one-line sections the same way for `--set`.
"""

from __future__ import annotations

import copy
import math

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.ir.train_config import (
    Choice,
    IMAGE_SIZES,
    METRICS,
    PHASE_ORDERS,
    PHASE_SETTINGS,
    Phase,
    PhaseOrder,
    SCALAR_SETTINGS,
    SETTINGS,
    TrainConfig,
    reads_data,
)
from netlang.lower.layers import LayerBuilder
from netlang.lower.loss_terms import loss_terms
from netlang.lower.names import Scope
from netlang.lower.values import POISON, Poisoned, Problem, Tensor
from netlang.ops.optim import Configurable, OPTIMIZERS, REGULARIZERS, SCHEDULES
from netlang.ops.schema import Arg, ArgumentProblem, FLOAT, INT, bind_arguments, describe_value

_EPS = Arg("eps", FLOAT, min=0.0, exclusive_min=True,
           doc="the largest change of any input value (the L∞ radius)")
_WEIGHT = Arg("weight", FLOAT, 0.5, min=0.0, max=1.0,
              doc="the attacked copy's share of the loss: (1 - weight)·L(x) + weight·L(x_adv)")
# The attacks `adversarial` takes (netlang/train/adversarial.py trains with them, through
# netlang/attack.py); PGD's `steps` and `step_size` left out take the attack's defaults there.
ADVERSARIAL_ATTACKS = {
    "fgsm": Configurable("fgsm", "attack", (_EPS, _WEIGHT),
                         "one step of eps along the sign of the input gradient"),
    "pgd": Configurable("pgd", "attack", (
        _EPS, Arg("steps", INT, None, min=1, doc="signed gradient steps (default 10)"),
        Arg("step_size", FLOAT, None, min=0.0, exclusive_min=True,
            doc="the size of each step (default 2.5·eps/steps)"), _WEIGHT),
        "steps signed gradient steps from a random start in the eps ball"),
}
# The augmentations `augment` takes, applied in the order given to each training batch of an
# image input [H, W, C] (netlang/train/augment.py applies them).
AUGMENTATIONS = {
    "crop": Configurable("crop", "augmentation", (
        Arg("padding", INT, 4, min=1, doc="zeros added on each side before cropping back"),),
        "a random crop of the image padded with zeros (torchvision's RandomCrop(padding))"),
    "flip": Configurable("flip", "augmentation", (
        Arg("p", FLOAT, 0.5, min=0.0, max=1.0, doc="the probability of a flip"),),
        "a horizontal (left-right) flip"),
    "shift": Configurable("shift", "augmentation", (
        Arg("pixels", INT, 2, min=1, doc="the largest move along each axis"),),
        "a move by up to `pixels` along each axis; vacated pixels repeat the edge"),
}


def lower_train_section(lowerer: LayerBuilder, section: ast.Train, scope: Scope) -> None:
    """Add the section's losses to `lowerer`'s graph and its settings as graph["train"].

    Every mistake is reported through `lowerer` and the other settings still checked.
    """
    config = TrainConfig()
    losses = _lower_items(lowerer, section, scope, config, SETTINGS)
    lowerer.graph.graph["losses"] = losses
    lowerer.graph.graph["train"] = config


def _lower_items(lowerer, section: ast.Train, scope: Scope, config: TrainConfig,
                 allowed) -> list:
    """Set `config` from the section's lines (keys outside `allowed` are refused); returns
    the section's losses [(node, weight)]."""
    seen = {}
    losses = []
    for item in section.items:
        key = item.key.id
        try:
            if key not in SETTINGS:
                raise Problem(f"unknown training setting `{key}`{did_you_mean(key, SETTINGS)}",
                              item.key.loc, "name", [f"known: {', '.join(SETTINGS)}"])
            if key not in allowed:
                raise Problem(f"a phase cannot set `{key}`: set it in the unnamed `train` "
                              f"section (a phase sets {', '.join(allowed)})", item.key.loc,
                              "name")
            if key not in ("loss", "regularize") and key in seen:
                raise Problem(f"`{key}` is set twice (first on line {seen[key].line})",
                              item.key.loc, "name")
            if key == "regularize" and key not in seen:
                config.regularizers = []   # a phase's own list replaces the inherited one
            if key in ("update", "freeze") and not ({"update", "freeze"} & set(seen)):
                # A section that names layers to update or freeze states its own choice: the
                # inherited `update` and `freeze` no longer apply.
                config.update, config.freeze = None, ()
            seen[key] = item.key.loc
            if item.on and key != "regularize":
                raise Problem("only `regularize` takes `on <layers>`", item.on[0].loc, "argument")
            if key == "loss":
                for value in item.values:
                    losses.extend(loss_terms(lowerer, value, scope))
            elif key == "optimizer":
                config.optimizer = _choice(lowerer, _single(item), OPTIMIZERS, "optimizer", scope)
            elif key == "schedule":
                config.schedule = _choice(lowerer, _single(item), SCHEDULES, "schedule", scope)
            elif key == "regularize":
                choice = _choice(lowerer, _single(item), REGULARIZERS, "regularizer", scope)
                choice.layers = tuple(_layer_names(lowerer, item.on, scope))
                config.regularizers.append(choice)
            elif key in ("freeze", "update"):
                layers = tuple(_layer_names(lowerer, item.values, scope))
                _refuse_both(item, layers, config.update if key == "freeze" else config.freeze,
                             seen)
                setattr(config, key, layers)
            elif key == "metrics":
                config.metrics = tuple(_metric(lowerer, v, scope) for v in item.values)
            elif key == "data":
                value = _single(item)
                config.data = value.id if isinstance(value, ast.Name) else lowerer.evaluate(value, scope)
                if not isinstance(config.data, str):
                    raise Problem("`data` names a data set, e.g. `data mnist`", value.loc, "argument")
            elif key == "phases":
                config.phases = _phase_order(lowerer, _single(item), scope)
            elif key == "adversarial":
                config.adversarial = _choice(lowerer, _single(item), ADVERSARIAL_ATTACKS,
                                             "attack", scope)
            elif key == "augment":
                config.augment = _augmentations(lowerer, item, scope)
            elif key == "image_size":
                config.image_size = _image_size(_single(item))
            else:
                setattr(config, key, _scalar(lowerer, key, _single(item), scope))
        except Problem as problem:
            lowerer.report(problem, scope)
        except Poisoned:
            pass
    if losses and not any(weight for _, weight in losses):
        lowerer.report(Problem("every loss term has weight 0: training would change nothing",
                               seen["loss"], "argument"), scope)
    return losses


def _check_attackable(lowerer, scope, sections: list, config: TrainConfig,
                      losses: list) -> None:
    """When `config` trains adversarially, an error at the `adversarial` line of the first of
    `sections` that has one (a phase's own, else the unnamed section's it inherits) unless
    adversarial training can attack the model with these losses (see `_require_attackable`).
    Checked once the losses are known, as they say which inputs are labels (a `--set`
    override is checked by the run, netlang/attack.py)."""
    loc = next((item.key.loc for section in sections for item in section.items
                if item.key.id == "adversarial"), None)
    if loc is None or config.adversarial is None:
        return
    if any(diagnostic.loc == loc for diagnostic in lowerer.diagnostics):
        return   # the unnamed section's line, already reported for an earlier phase
    try:
        _require_attackable(lowerer.graph, losses, loc)
    except Problem as problem:
        lowerer.report(problem, scope)


def _require_attackable(graph, losses: list, loc) -> None:
    """A Problem at `loc` unless adversarial training can attack this model: one data input
    (an input that more than the losses read), holding floats, and no running statistics
    (their update from two passes per step is pending)."""
    loss_nodes = {node for node, _ in losses} | set(graph.nodes_with_role("loss"))
    data = []
    for name, node in graph.graph["inputs"].items():
        readers = set(graph.successors(node))
        if not readers or not readers <= loss_nodes:
            data.append(name)
    if not data:
        raise Problem("adversarial training attacks the data input, and this model has none",
                      loc, "argument")
    if len(data) > 1:
        raise Problem(f"adversarial training attacks one data input, and this model has "
                      f"{len(data)} ({', '.join(f'`{name}`' for name in data)})", loc,
                      "argument")
    if not graph.type_of(graph.graph["inputs"][data[0]]).is_float:
        raise Problem(f"adversarial training moves a float data input (an image, a feature "
                      f"vector), and input `{data[0]}` holds integers, which have no gradient",
                      loc, "argument")
    buffers = list(graph.buffers().values())
    if buffers:
        raise Problem(f"adversarial training of a model with running statistics (layer "
                      f"`{graph.nodes[buffers[0]]['layer']}`) is pending", loc, "argument")


def _augmentations(lowerer, item: ast.TrainItem, scope) -> tuple:
    """`augment crop(padding = 4), flip, shift(2)` → Choices, each augmentation at most once."""
    choices = []
    for value in item.values:
        choice = _choice(lowerer, value, AUGMENTATIONS, "augmentation", scope)
        if any(c.name == choice.name for c in choices):
            raise Problem(f"`{choice.name}` is listed twice", value.loc, "argument")
        choices.append(choice)
    return tuple(choices)


def _image_size(value) -> str:
    """`image_size check` or `image_size resize`."""
    if not isinstance(value, ast.Name) or value.id not in IMAGE_SIZES:
        raise Problem(f"`image_size` is {' or '.join(IMAGE_SIZES)}", value.loc, "argument")
    return value.id


def _refuse_both(item: ast.TrainItem, layers: tuple, other: tuple | None, seen: dict) -> None:
    """A one-line error when a layer of this `update`/`freeze` line is in the other one."""
    for name, layer in zip(item.values, layers):
        if other and layer in other:
            other_key = "update" if item.key.id == "freeze" else "freeze"
            raise Problem(f"layer `{layer}` is both updated and frozen (`{other_key}` on line "
                          f"{seen[other_key].line})", name.loc, "argument")


def _phase_order(lowerer, expr, scope) -> PhaseOrder:
    """`alternate(a * 5, b)` or `sequence(a, b)` → a PhaseOrder (names checked later)."""
    if not isinstance(expr, ast.Call) or expr.func not in PHASE_ORDERS:
        raise Problem("`phases` is `alternate(a * k, b)` or `sequence(a, b)`", expr.loc,
                      "argument")
    steps = []
    for arg in expr.args:
        value, count = arg.value, 1
        if arg.name is not None:
            raise Problem("`phases` takes phase names, not keywords", arg.loc, "argument")
        if isinstance(value, ast.BinOp) and value.op == "*" and isinstance(value.left, ast.Name):
            if expr.func == "sequence":
                raise Problem("a sequence runs each phase for its own `epochs`; steps per round "
                              "(`* k`) belong to `alternate`", value.loc, "argument")
            count = lowerer.evaluate(value.right, scope)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise Problem(f"a phase's steps per round must be a positive integer, not "
                              f"{describe_value(count)}", value.right.loc, "argument")
            value = value.left
        if not isinstance(value, ast.Name):
            raise Problem("expected the name of a phase (a `train NAME { ... }` section)",
                          value.loc, "argument")
        if any(name == value.id for name, _, _ in steps):
            raise Problem(f"phase `{value.id}` is listed twice", value.loc, "argument")
        steps.append((value.id, count, value.loc))
    if not steps:
        raise Problem(f"`{expr.func}` needs at least one phase", expr.loc, "argument")
    return PhaseOrder(expr.func, tuple((name, count) for name, count, _ in steps),
                      {name: loc for name, _, loc in steps})


def lower_train_sections(lowerer: LayerBuilder, sections: list, scope: Scope) -> None:
    """Lower a file's train sections: graph["train"] holds the unnamed section's settings,
    graph["phases"] one Phase per named section (in the order `phases` gives) or the one
    implicit phase, and graph["losses"] the losses of the last phase (the model's own loss:
    what evaluation reports as `loss`)."""
    unnamed = [s for s in sections if s.name is None]
    named = [s for s in sections if s.name is not None]
    for extra in unnamed[1:]:
        lowerer.report(Problem("a file has at most one unnamed `train` section (name the "
                               "others: `train NAME { ... }`)", extra.loc, "name"), scope)
    graph = lowerer.graph
    if unnamed:
        lower_train_section(lowerer, unnamed[0], scope)
        if not named:   # else each phase is checked with its own losses
            _check_attackable(lowerer, scope, [unnamed[0]], graph.graph["train"],
                              graph.graph["losses"])
    else:
        graph.graph["losses"], graph.graph["train"] = [], TrainConfig()
    base = graph.graph["train"]
    if not named:
        if base.phases is not None:
            lowerer.report(Problem("`phases` orders named train sections, and this file has "
                                   "none (`train NAME { ... }`)", _item_loc(unnamed[0], "phases"),
                                   "name"), scope)
        graph.graph["phases"] = [Phase(None, graph.graph["losses"], base)]
        return
    graph.graph["phases"] = []
    defined = {}
    for section in named:
        name = section.name.id
        if name in defined:
            lowerer.report(Problem(f"phase `{name}` is defined twice (first on line "
                                   f"{defined[name].name.loc.line})", section.name.loc,
                                   "name"), scope)
            continue
        defined[name] = section
    phases = {name: _lower_phase(lowerer, section, scope, base, unnamed[:1]) for name, section
              in defined.items()}
    if base.phases is None:
        if unnamed and any(item.key.id == "phases" for item in unnamed[0].items):
            return   # its `phases` line is wrong, and that error is already reported
        first = named[0]
        lowerer.report(Problem(f"phase `{first.name.id}` needs an order: add `phases "
                               f"alternate(...)` or `phases sequence(...)` to the unnamed "
                               f"`train` section", first.name.loc, "name"), scope)
        return
    _check_order(lowerer, scope, base.phases, defined, phases, unnamed[0])


def _item_loc(section: ast.Train, key: str):
    return next(item.key.loc for item in section.items if item.key.id == key)


def _lower_phase(lowerer, section: ast.Train, scope: Scope, base: TrainConfig,
                 unnamed: list):
    """One named section → its Phase (None when its losses failed to lower); `unnamed` holds
    the unnamed section, if any, whose settings it inherits."""
    config = copy.deepcopy(base)
    config.phases = None
    before = len(lowerer.diagnostics)
    losses = _lower_items(lowerer, section, scope, config, PHASE_SETTINGS)
    if len(lowerer.diagnostics) > before:
        return None
    losses = losses or list(lowerer.graph.graph["losses"])
    graph = lowerer.graph
    if not losses:
        lowerer.report(Problem(f"phase `{section.name.id}` has no loss: add `loss ...` to it "
                               f"or to the unnamed `train` section", section.name.loc, "name"),
                       scope)
        return None
    if not any(config.updates_layer(graph.nodes[node]["layer"])
               for node in graph.parameters().values()):
        lowerer.report(Problem(f"phase `{section.name.id}` updates no parameter (check its "
                               f"`update` and `freeze`)", section.name.loc, "name"), scope)
        return None
    _check_attackable(lowerer, scope, [section, *unnamed], config, losses)
    own = tuple(dict.fromkeys(item.key.id for item in section.items))
    return Phase(section.name.id, losses, config, own=own)


def _check_order(lowerer, scope, order: PhaseOrder, defined: dict, phases: dict,
                 unnamed: ast.Train) -> None:
    """Every phase of `phases` defined, every defined phase in it, and an order that ends."""
    locations = order.locations
    ok = True
    for name, _ in order.steps:
        if name not in defined:
            ok = False
            lowerer.report(Problem(f"unknown phase `{name}`{did_you_mean(name, defined)}",
                                   locations[name], "name",
                                   [f"defined: {', '.join(defined)}"]), scope)
    listed = {name for name, _ in order.steps}
    for name, section in defined.items():
        if name not in listed:
            ok = False
            lowerer.report(Problem(f"phase `{name}` is not in `phases {order.kind}(...)`",
                                   section.name.loc, "name"), scope)
    if not ok or any(phases[name] is None for name, _ in order.steps):
        return
    graph = lowerer.graph
    for name, count in order.steps:
        phase = phases[name]
        phase.steps = count
        if order.kind == "alternate" and any(item.key.id == "epochs"
                                             for item in defined[name].items):
            lowerer.report(Problem(f"in an alternation every phase runs for the unnamed "
                                   f"section's `epochs`; phase `{name}` cannot set its own",
                                   _item_loc(defined[name], "epochs"), "name"), scope)
        if order.kind == "sequence" and not reads_data(graph, phase.losses):
            lowerer.report(Problem(f"phase `{name}` reads no data, so its epochs would never "
                                   f"end", locations[name], "name"), scope)
    if order.kind == "alternate" and not any(reads_data(graph, phases[name].losses)
                                             for name, _ in order.steps):
        lowerer.report(Problem("no phase of this alternation reads data, so its epochs would "
                               "never end", _item_loc(unnamed, "phases"), "name"), scope)
    graph.graph["phases"] = [phases[name] for name, _ in order.steps]
    graph.graph["losses"] = list(graph.graph["phases"][-1].losses)


def _single(item: ast.TrainItem):
    if len(item.values) != 1:
        raise Problem(f"`{item.key.id}` takes one value", item.loc, "argument")
    return item.values[0]


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _scalar(lowerer, key, expr, scope):
    kind, low, high, what = SCALAR_SETTINGS[key]
    value = lowerer.evaluate(expr, scope)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not _finite(value) or (kind is int and not float(value).is_integer()):
        raise Problem(f"`{key}` ({what}) must be {'an integer' if kind is int else 'a number'}, "
                      f"not {describe_value(value)}", expr.loc, "argument")
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise Problem(f"`{key}` must be {bound}, not {value}", expr.loc, "argument")
    return value


def _choice(lowerer, expr, table, what, scope) -> Choice:
    if isinstance(expr, ast.Name):
        name, args = expr.id, ()
    elif isinstance(expr, ast.Call):
        name, args = expr.func, expr.args
    else:
        raise Problem(f"expected {what} such as `{next(iter(table))}(...)`", expr.loc, "argument")
    if name not in table:
        raise Problem(f"unknown {what} `{name}`{did_you_mean(name, table)}", expr.loc, "name",
                      [f"known: {', '.join(sorted(table))}"])
    entry = table[name]
    positional = [lowerer.evaluate(a.value, scope) for a in args if a.name is None]
    keywords = [(a.name, lowerer.evaluate(a.value, scope)) for a in args if a.name is not None]
    try:
        bound = bind_arguments(entry.args, positional, keywords, f"{what} `{name}`")
    except ArgumentProblem as problem:
        loc = expr.loc
        for i, a in enumerate(args):
            if problem.index == i or problem.index == a.name:
                loc = a.loc
        raise Problem(problem.message, loc, "argument") from None
    return Choice(name, bound)


def _layer_names(lowerer, exprs, scope):
    names = []
    for expr in exprs:
        if not isinstance(expr, ast.Name):
            raise Problem("expected the name of a layer", expr.loc, "argument")
        try:
            value = scope.lookup(expr.id)
        except KeyError:
            raise Problem(f"unknown layer `{expr.id}`{did_you_mean(expr.id, scope.visible_names())}",
                          expr.loc, "name") from None
        if value is POISON:  # its definition failed, and that error is already reported
            raise Poisoned()
        if not isinstance(value, Tensor):
            raise Problem(f"`{expr.id}` is not a layer", expr.loc, "argument")
        if lowerer.graph.nodes[value.node]["role"] == "input":
            raise Problem(f"`{expr.id}` is an input, not a layer with parameters", expr.loc,
                          "argument")
        names.append(value.layer)
    return names


def _metric(lowerer, expr, scope):
    if isinstance(expr, ast.Name) and expr.id in METRICS and expr.id != "top_k":
        return expr.id
    if isinstance(expr, ast.Call) and expr.func == "top_k":
        if len(expr.args) != 1 or expr.args[0].name not in (None, "k"):
            raise Problem("`top_k` takes one argument, k", expr.loc, "argument")
        k = lowerer.evaluate(expr.args[0].value, scope)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise Problem(f"`top_k` needs a positive integer, not {describe_value(k)}", expr.loc,
                          "argument")
        return f"top_{k}"
    word = expr.id if isinstance(expr, ast.Name) else getattr(expr, "func", "?")
    raise Problem(f"unknown metric `{word}`{did_you_mean(word, METRICS)}", expr.loc, "name",
                  ["known: accuracy, top_k(k), loss, confusion"])
