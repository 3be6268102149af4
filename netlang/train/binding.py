"""Which data goes to which input: a model's inputs, targets and heads.

`Binding` maps data onto the model's inputs: a data set's `x` goes to the model's one data
input, its `y` to the input that the model's losses compare against (the second operand of a
loss).  Models with several data inputs or several targets take a dict {input name: array}:
from Python, or from an .npz holding `<input>_train`/`<input>_test` for each input.  Each loss
is a head (`Head`), scored on its own by evaluation.  Arrays are checked and converted here
once, so the trainer, evaluation and prediction take {input name: array} that already fit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from netlang.data import check_labels, fit_to_shape
from netlang.errors import DataError
from netlang.ir.train_config import phases_of
from netlang.ops import stated_integer_bounds
from netlang.train.metrics import CLASS_SCORE_LOSSES, Head, compares_prediction


@dataclasses.dataclass
class Binding:
    """How arrays map onto a model's inputs, and which losses the metrics read."""

    inputs: dict            # input name → (per-example shape, is_float)
    data_input: str | None  # receives `x`; None when the model has several data inputs
    label_input: str | None  # receives `y`; None when no input is only a loss target
    head: Head | None       # the loss read for accuracy and probabilities
    losses: list            # [(loss node name, weight)]
    data_inputs: tuple = ()
    label_inputs: tuple = ()
    heads: dict = dataclasses.field(default_factory=dict)  # head name → Head, one per loss
    # Integer input → how many values its ids may take, where a consumer says (an
    # embedding's vocabulary, a loss's class count): the tightest such bound.
    id_bounds: dict = dataclasses.field(default_factory=dict)
    # Phase name → its losses [(loss node name, weight)], for a model with named phases.
    phases: dict = dataclasses.field(default_factory=dict)
    # Noise inputs (`input z: [64] ~ normal`): name → per-example shape.  They are not in
    # `inputs`: the engine draws them for every batch, and data never feeds them.
    noise_inputs: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """The number of classes the metrics head scores, None for a regression head."""
        return self.head.num_classes if self.head is not None and self.head.classify else None

    @property
    def single(self) -> bool:
        """Whether one input array `x` and one target array `y` can feed the model: one data
        input and at most one target input."""
        return self.data_input is not None and len(self.label_inputs) <= 1

    @property
    def target_kind(self) -> str:
        """How a data file's `y` is read for this model: "labels" (class indices) when the
        target input holds integers, "values" (float targets: one-hot rows, probabilities,
        regression values) when it holds floats."""
        if self.label_input is None:
            return "labels"
        return "values" if self.inputs[self.label_input][1] else "labels"

    @property
    def target_columns(self) -> int:
        """How many values one example's target holds (a CSV's target columns)."""
        if self.label_input is None:
            return 1
        return math.prod(self.inputs[self.label_input][0])


def bind(graph) -> Binding:
    """Work out the data input, the label input and the heads of a graph."""
    inputs, noise_inputs = {}, {}
    for name, node in graph.graph["inputs"].items():
        t = graph.type_of(node)
        if graph.nodes[node]["attrs"].get("noise") is not None:
            noise_inputs[name] = tuple(t.shape[1:])
        else:
            inputs[name] = (tuple(t.shape[1:]), t.is_float)
    # Every phase's losses: an input that only the losses of some phase read is a target.
    phases = phases_of(graph)
    loss_nodes = {n for phase in phases for n, _ in phase.losses}
    loss_nodes |= set(graph.nodes_with_role("loss"))  # nodes of loss terms written as expressions
    target_only = []
    for name, node in graph.graph["inputs"].items():
        if name in noise_inputs:
            continue
        users = set(graph.successors(node))
        if users and users <= loss_nodes:
            target_only.append(name)
    data_inputs = tuple(n for n in inputs if n not in target_only)
    if not data_inputs and len(inputs) == 1:
        data_inputs = tuple(inputs)
    output_names = {node: name for name, node in graph.graph["outputs"].items()}
    losses, heads = [], []
    for node, weight in graph.graph.get("losses") or []:
        losses.append((graph.nodes[node]["name"], float(weight)))
        if not compares_prediction(graph, node):
            continue  # kl_normal, a term written as an expression: nothing to read as classes
        prediction, target = graph.operands(node)
        data = graph.nodes[node]
        target_name = graph.nodes[target]["name"] if graph.nodes[target]["op"] == "input" else None
        pred_type, target_type = graph.type_of(prediction), graph.type_of(target)
        units = int(pred_type.shape[-1]) if pred_type.rank >= 1 and pred_type.shape[-1] else 1
        if len(pred_type.shape) <= 1:
            units = 1
        classify = (not target_type.is_float) or (data["op"] in CLASS_SCORE_LOSSES)
        if data["op"] not in CLASS_SCORE_LOSSES and target_type.is_float:
            classify = False  # a regression or reconstruction target
        read = Head(loss=data["name"], kind=data["op"], prediction=graph.nodes[prediction]["name"],
                    target=target_name, units=units,
                    logits=bool(data["attrs"].get("logits", False)), classify=classify)
        heads.append((output_names.get(prediction, read.prediction), read))
    head = next((h for _, h in heads if h.classify), heads[0][1] if heads else None)
    label_inputs = tuple(target_only)
    label_input = None
    if head is not None and head.target in target_only:
        label_input = head.target
    elif len(target_only) == 1:
        label_input = target_only[0]
    id_bounds = {}
    for name, node in graph.graph["inputs"].items():
        if name in noise_inputs:
            continue
        bound = None if inputs[name][1] else _id_bound(graph, node)
        if bound is not None:
            id_bounds[name] = bound
    return Binding(inputs=inputs, data_input=data_inputs[0] if len(data_inputs) == 1 else None,
                   label_input=label_input, head=head, losses=losses,
                   data_inputs=data_inputs, label_inputs=label_inputs,
                   heads=_named_heads(heads), id_bounds=id_bounds,
                   noise_inputs=noise_inputs,
                   phases={phase.name: [(graph.nodes[n]["name"], float(w)) for n, w in phase.losses]
                           for phase in phases if phase.name is not None})


def _id_bound(graph, node) -> int | None:
    """How many values an integer input's ids may take: the tightest bound its consumers
    state by their op's `integer_bound`; None where none states one."""
    return min((b for b in stated_integer_bounds(graph, node) if b is not None), default=None)


def _named_heads(heads: list) -> dict:
    """{name: Head}: each head named after the output its loss reads, or the layer when the
    prediction is no output; two losses on one prediction are told apart by their loss."""
    counts = {}
    for name, _ in heads:
        counts[name] = counts.get(name, 0) + 1
    return {(name if counts[name] == 1 else f"{name}/{head.loss}"): head for name, head in heads}


def fit_input(binding: Binding, name: str, array, what: str, dtype=np.float32) -> np.ndarray:
    """`array` checked and converted for input `name`: its examples shaped like the input's,
    a float input's values in `dtype` (the engine's float width: any other width or integer
    type is converted, uint8 images scaled to [0, 1]), labels as int64; anything else is a
    one-line DataError that starts with `what` (what the array is, e.g. `digits (train)`)."""
    if name in binding.noise_inputs:
        raise DataError(f"{what}: input `{name}` is a noise input, drawn afresh for every batch; "
                        f"data never feeds it")
    if name not in binding.inputs:
        known = ", ".join(f"`{n}`" for n in binding.inputs)
        raise DataError(f"{what}: the model has no input `{name}` (its inputs: {known})")
    shape, is_float = binding.inputs[name]
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == np.bool_):
        raise DataError(f"{what}: input `{name}` needs numbers, got dtype {array.dtype}")
    if array.ndim == 0:
        raise DataError(f"{what}: input `{name}` needs an array with a sample axis, got a scalar")
    if not shape:  # per-example scalars (labels): one value per sample
        if array.ndim != 1:
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            else:
                hint = (f" (one-hot or probability rows need a float input, e.g. `input {name}: "
                        f"[{array.shape[1]}]`)") if array.ndim == 2 and not is_float else ""
                raise DataError(f"{what}: input `{name}` takes one value per example, got "
                                f"shape {array.shape}{hint}")
    else:
        if array.ndim == 1:
            array = array.reshape(len(array), 1) if shape == (1,) else array
        if array.ndim < 2:
            hint = (f" (class indices need an integer input, e.g. `input {name}: int32[]`)"
                    if is_float and len(shape) == 1 and np.issubdtype(array.dtype, np.integer)
                    else "")
            raise DataError(f"{what}: input `{name}` expects examples of shape {shape}, got an "
                            f"array of shape {array.shape}{hint}")
        array = fit_to_shape(array, shape, what=f"{what}: `{name}`")
    if is_float:
        if array.dtype == np.uint8:
            return array.astype(dtype) / np.dtype(dtype).type(255.0)
        array = array.astype(dtype, copy=False)
        if not np.isfinite(array).all():
            raise DataError(f"{what}: input `{name}` contains NaN or infinite values")
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(f"{what}: input `{name}` takes integer labels, got non-integer values")
    return array.astype(np.int64)


def check_examples(binding: Binding, arrays: dict, what: str) -> None:
    """Refuse fitted arrays that disagree: integer labels out of their head's class range, or
    inputs with different numbers of examples (or none)."""
    for head in binding.heads.values():
        target = head.target
        if head.classify and target in arrays and not binding.inputs[target][1]:
            check_labels(arrays[target].reshape(-1), head.num_classes,
                         what=f"{what}: `{target}` labels")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"`{n}` {k}" for n, k in lengths.items())
        raise DataError(f"{what}: inputs have different numbers of examples ({detail})")
    if arrays and not next(iter(lengths.values())):
        raise DataError(f"{what}: no examples")


def as_arrays(binding: Binding, x, y=None, *, what: str = "data", dtype=np.float32) -> dict:
    """{input name: array} from `x` (an array for the data input, or a dict) and `y`; float
    inputs in `dtype` (see `fit_input`)."""
    arrays = {}
    if isinstance(x, dict):
        for name, value in x.items():
            arrays[name] = fit_input(binding, name, value, what, dtype)
    elif x is not None:
        if binding.data_input is None:
            names = ", ".join(f"`{n}`" for n in binding.data_inputs)
            raise DataError(f"{what}: the model has several data inputs ({names}); pass a dict "
                            f"{{input name: array}}")
        arrays[binding.data_input] = fit_input(binding, binding.data_input, x, what, dtype)
    if isinstance(y, dict):
        for name, value in y.items():
            arrays[name] = fit_input(binding, name, value, what, dtype)
    elif y is not None and binding.label_input is not None:
        arrays[binding.label_input] = fit_input(binding, binding.label_input, y, what, dtype)
    check_examples(binding, arrays, what)
    return arrays


def count_examples(arrays: dict) -> int:
    """How many examples {input name: array} holds (all arrays have as many)."""
    return len(next(iter(arrays.values()))) if arrays else 0


def take_examples(arrays: dict, index) -> dict:
    """The examples at `index` (a slice or an index array) of every input."""
    return {name: a[index] for name, a in arrays.items()}


def check_complete(binding: Binding, arrays: dict, what: str) -> None:
    """Refuse data that leaves one of the model's inputs without arrays (training needs
    them all)."""
    missing = [n for n in binding.inputs if n not in arrays]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        hint = " (pass the labels as y)" if binding.label_input in missing else ""
        raise DataError(f"{what}: no data for input {names}{hint}")
