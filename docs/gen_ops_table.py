"""Generate the reference tables of docs/language.md from the registries.

    python docs/gen_ops_table.py            # print the generated Markdown
    python docs/gen_ops_table.py --write    # refresh docs/language.md in place

The argument tables (names, types, defaults, bounds, one-line docs) come from
the op registry (`netlang.ops`) and the train-section schemas
(`netlang.ops.optim`, `netlang.ir.train_config`), so they cannot drift from what
the compiler accepts.  The shape rules, parameter layouts and examples are
written here, next to the tables they accompany.  Each generated region of the
document sits between `<!-- BEGIN GENERATED: name -->` and
`<!-- END GENERATED: name -->` markers; everything outside them is hand-written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from netlang.ir.train_config import METRICS, SCALAR_SETTINGS
from netlang.ops.optim import OPTIMIZERS, REGULARIZERS, SCHEDULES
from netlang.ops.registry import all_ops

DOC = Path(__file__).resolve().parent / "language.md"

# The order and titles of the op families in the reference.
FAMILIES = [
    ("dense", "Fully connected and embedding"),
    ("conv", "Convolution"),
    ("pool", "Pooling"),
    ("activation", "Activations"),
    ("norm", "Normalisation and dropout"),
    ("recurrent", "Recurrent"),
    ("reshape", "Reshaping"),
    ("merge", "Merging branches"),
    ("loss", "Losses (train section only)"),
]

TYPE_NAMES = {
    "int": "int",
    "float": "number",
    "bool": "bool",
    "string": "string",
    "int or (int, int)": "int or (int, int)",
    "tuple of ints": "tuple of ints",
    "layer name": "layer name",
    "`same`, `valid` or padding": "`same`, `valid`, int, (int, int) or ((int, int), (int, int))",
}

# Shape rule, parameters and an example for every op a user writes.
# shape: the rule in words; params: what it learns (None: nothing); example: a whole model.
DETAILS = {
    "dense": dict(
        shape="`(..., in)` → `(..., units)`: maps the last axis and keeps the others (time "
              "steps of a sequence included). Floating-point input with at least one feature "
              "axis; flatten images first.",
        params="`weight` `(units, in)` (Glorot uniform), `bias` `(units,)` (zeros) unless "
               "`bias = false`. With `tie = other`, the weight is `other`'s weight transposed and "
               "only the bias is new; `other` must be a `dense` layer whose weight is `(in, units)`.",
        example="input x: [784]\noutput h = x -> dense(256, bias = false) -> dense(10)"),
    "embedding": dict(
        shape="integer ids of any shape `(...)` → `(..., dim)`, float32.",
        params="`weight` `(vocab, dim)` (normal).",
        example="input tokens: int32[20]\noutput vectors = tokens -> embedding(5000, 64)   "
                "# (20, 64)"),
    "conv2d": dict(
        shape="`(H, W, C)` → `(H', W', filters)`, with "
              "`H' = floor((H + pad_top + pad_bottom − dilation·(kh − 1) − 1) / stride) + 1` "
              "(likewise W'). `same` pads so that `H' = ceil(H / stride)`, any odd padding "
              "going to the bottom/right. `C` and `filters` must be divisible by `groups`.",
        params="`weight` `(filters, C / groups, kh, kw)` (He uniform), `bias` `(filters,)` "
               "unless `bias = false`.",
        example="input image: [32, 32, 3]\n"
                "output y = image -> conv2d(16, 3, padding = 1)             # (32, 32, 16)\n"
                "  -> conv2d(32, (3, 1), stride = 2, padding = \"same\")      # (16, 16, 32)\n"
                "  -> conv2d(32, 3, groups = 32, bias = false)            # depthwise: (14, 14, 32)"),
    "conv_transpose2d": dict(
        shape="`(H, W, C)` → `(H', W', filters)` with "
              "`H' = (H − 1)·stride − 2·padding + dilation·(kh − 1) + output_padding + 1`. "
              "`output_padding` must be smaller than `stride` or `dilation`.",
        params="`weight` `(C, filters / groups, kh, kw)` (PyTorch's layout), `bias` `(filters,)`.",
        example="input code: [7, 7, 32]\n"
                "output up = code -> conv_transpose2d(16, 3, stride = 2, padding = 1, "
                "output_padding = 1)   # (14, 14, 16)"),
    "maxpool": dict(
        shape="`(H, W, C)` → `(H', W', C)`; without `ceil_mode`, "
              "`H' = floor((H + pad_top + pad_bottom − kernel) / stride) + 1`; with it the "
              "division rounds up, except that the last window must start inside the input or "
              "its top/left padding (PyTorch's rule). Padding may be at most half the window.",
        params=None,
        example="input x: [112, 112, 64]\n"
                "output y = x -> maxpool(3, stride = 2, ceil_mode = true)   # (56, 56, 64)"),
    "avgpool": dict(
        shape="as `maxpool`.",
        params=None,
        example="input x: [8, 8, 16]\n"
                "output y = x -> avgpool(2, padding = 1, count_include_pad = false)   # (5, 5, 16)"),
    "global_avgpool": dict(
        shape="`(H, W, C)` → `(C,)`.",
        params=None,
        example="input x: [7, 7, 512]\noutput y = x -> global_avgpool   # (512,)"),
    "identity": dict(shape="unchanged (floating-point input).", params=None,
                     example="input x: [3]\noutput y = x -> dense(1) -> identity"),
    "sign": dict(shape="unchanged; −1 where the input is negative, +1 elsewhere (0 included).",
                 params=None, example="input x: [2]\noutput y = x -> dense(1) -> sign"),
    "threshold": dict(shape="unchanged; 1 where the input is greater than `value`, else 0.",
                      params=None, example="input x: [2]\noutput y = x -> dense(1) -> threshold(0.5)"),
    "sigmoid": dict(shape="unchanged.", params=None,
                    example="input x: [2]\noutput p = x -> dense(1) -> sigmoid"),
    "tanh": dict(shape="unchanged.", params=None, example="input x: [4]\noutput y = x -> tanh"),
    "relu": dict(shape="unchanged.", params=None, example="input x: [4]\noutput y = x -> relu"),
    "leaky_relu": dict(shape="unchanged.", params=None,
                       example="input x: [4]\noutput y = x -> leaky_relu(0.1)"),
    "elu": dict(shape="unchanged.", params=None,
                example="input x: [4]\noutput y = x -> elu(alpha = 1.0)"),
    "softmax": dict(
        shape="unchanged; `axis` must be a per-example axis (0 … rank − 1, or −1 … −rank). "
              "For training, feed `cross_entropy` the raw scores instead: it applies softmax "
              "itself.",
        params=None, example="input x: [10]\noutput probs = x -> softmax"),
    "log_softmax": dict(shape="as `softmax`.", params=None,
                        example="input x: [5, 10]\noutput y = x -> log_softmax(axis = 0)"),
    "maxout": dict(
        shape="`(..., units·pieces)` → `(..., units)`: the last axis must be divisible by "
              "`pieces`.",
        params=None, example="input x: [20]\noutput y = x -> dense(3 * 64) -> maxout(3)   # (64,)"),
    "batchnorm": dict(
        shape="unchanged; normalises over the last axis (channels), which must exist "
              "(per-example rank ≥ 1).",
        params="`weight` `(C,)` (ones) and `bias` `(C,)` (zeros); the buffers `running_mean` and "
               "`running_var` `(C,)` are state, not parameters, and are not counted in "
               "`total_params`.",
        example="input x: [28, 28, 1]\n"
                "output y = x -> conv2d(8, 3, bias = false) -> batchnorm(momentum = 0.1) -> relu"),
    "lrn": dict(
        shape="unchanged; the input is `(C,)`-last with one or two spatial axes "
              "(per-example rank 2 or 3).",
        params=None,
        example="input x: [27, 27, 96]\n"
                "output y = x -> lrn(size = 5, alpha = 1e-4, beta = 0.75, k = 2)"),
    "dropout": dict(
        shape="unchanged (floating-point input); the identity at evaluation time.",
        params=None, example="input x: [800]\noutput y = x -> dropout(0.5)"),
    "rnn": dict(
        shape="`(T, F)` → `(units·D,)` (the last step's output), or `(T, units·D)` with "
              "`sequences = true`; `D` is 2 when bidirectional, else 1.",
        params="for each layer `l` and direction (suffix `_reverse` for the backward one): "
               "`weight_ih_l<l>` `(G·units, in)`, `weight_hh_l<l>` `(G·units, units)`, "
               "`bias_ih_l<l>` and `bias_hh_l<l>` `(G·units,)`, where `in` is `F` for layer 0 "
               "and `units·D` above it; `G` is 1 for `rnn`, 4 for `lstm` (gates i, f, g, o) and "
               "3 for `gru` (r, z, n) — PyTorch's names and layouts.",
        example="input x: [50, 8]\noutput h = x -> rnn(32, activation = relu)   # (32,)"),
    "lstm": dict(
        shape="as `rnn`.", params="as `rnn`, with `G = 4`.",
        example="input x: [50, 8]\n"
                "output h = x -> lstm(64, layers = 2, bidirectional = true, sequences = true)"
                "   # (50, 128)"),
    "gru": dict(shape="as `rnn`.", params="as `rnn`, with `G = 3`.",
                example="input x: [50, 8]\noutput h = x -> gru(32)   # (32,)"),
    "flatten": dict(shape="`(d1, d2, …)` → `(d1·d2·…,)`, row-major (channels vary fastest).",
                    params=None,
                    example="input x: [5, 5, 16]\noutput y = x -> flatten   # (400,)"),
    "reshape": dict(
        shape="any per-example shape with the same number of elements; one entry may be −1 "
              "and is then inferred.",
        params=None, example="input x: [784]\noutput y = x -> reshape((28, 28, 1))"),
    "permute": dict(
        shape="`axes` is a permutation of the per-example axes `0 … rank − 1`; output axis `i` "
              "is input axis `axes[i]`.",
        params=None,
        example="input x: [28, 28, 3]\noutput y = x -> permute((2, 0, 1))   # (3, 28, 28)"),
    "concat": dict(
        shape="two or more tensors of one dtype and rank whose shapes agree except along "
              "`axis`; the output's `axis` is the sum.",
        params=None,
        example="input a: [8, 8, 16]\ninput b: [8, 8, 32]\n"
                "output c = (a, b) -> concat   # (8, 8, 48)"),
    "add": dict(
        shape="two or more tensors of the same shape and dtype; the result has that shape. "
              "`a + b` between two tensors is `(a, b) -> add`.",
        params=None,
        example="input x: [16]\nh = x -> dense(16) -> relu\noutput y = h + x"),
    "multiply": dict(
        shape="as `add`; `a * b` between two tensors is `(a, b) -> multiply`.",
        params=None,
        example="input x: [16]\ngate = x -> dense(16) -> sigmoid\noutput y = (x, gate) -> multiply"),
    "cross_entropy": dict(
        shape="prediction: raw scores `(..., C)` with a class axis; target: integer labels "
              "`(...)` (the prediction's shape without its class axis) or a float probability "
              "vector of the prediction's shape. The result is a scalar: the mean over the batch "
              "(and over time for sequences).",
        params=None,
        example="input image: [784]\ninput label: int32[]\n"
                "output logits = image -> dense(10)\n"
                "train { loss cross_entropy(logits, label, label_smoothing = 0.1) }"),
    "binary_cross_entropy": dict(
        shape="a target of the prediction's shape; or integer labels of the prediction's shape "
              "without its last axis, which stand for one-hot rows or, when that axis has one "
              "unit, for the target value itself. Scalar result.",
        params=None,
        example="input x: [2]\ninput label: int32[]\n"
                "output score = x -> dense(1)\n"
                "train { loss binary_cross_entropy(score, label, logits = true) }"),
    "squared_error": dict(
        shape="as `binary_cross_entropy`. Scalar result.",
        params=None,
        example="input x: [784]\noutput recon = x -> dense(32) -> relu -> dense(784)\n"
                "train { loss squared_error(recon, x) }"),
    "mse": dict(
        shape="as `binary_cross_entropy`. Scalar result.",
        params=None,
        example="input x: [3]\ninput y: [1]\noutput pred = x -> dense(1)\ntrain { loss mse(pred, y) }"),
    "hinge": dict(
        shape="prediction: class scores `(..., C)`; target: integer labels `(...)` only. "
              "Scalar result.",
        params=None,
        example="input x: [2]\ninput label: int32[]\noutput scores = x -> dense(3)\n"
                "train { loss hinge(scores, label, margin = 1) }"),
}


# One-line meanings for arguments whose schema has no `doc` (by argument name; the
# optimizer and schedule arguments mean the same wherever they appear).
ARG_NOTES = {
    "stride": "step between windows: s or (sh, sw)",
    "dilation": "spacing between kernel taps (1: a dense kernel)",
    "kernel": "kernel size: k or (kh, kw)",
    "groups": "channel groups",
    "bias": "add a learned bias",
    "momentum": "momentum factor (0: none)",
    "nesterov": "use Nesterov momentum",
    "dampening": "dampening of the momentum",
    "eps": "added to the denominator for numerical stability",
    "alpha": "smoothing constant of the running average of squared gradients",
    "beta1": "decay rate of the first-moment (mean) estimate",
    "beta2": "decay rate of the second-moment (variance) estimate",
    "every": "epochs between decays",
    "gamma": "multiplicative decay factor",
    "min_lr": "the final learning rate",
    "epochs": "warm-up epochs",
    "strength": "penalty coefficient λ",
    "l1": "coefficient of the L1 term",
    "l2": "coefficient of the L2 term",
    "label_smoothing": "mix this much of the uniform distribution into the targets",
    "margin": "the margin the correct class's score must win by",
    "activation": "the nonlinearity applied to each new state",
}


def fmt_default(arg) -> str:
    if arg.required:
        return "required"
    value = arg.default
    if value is None:
        return "the kernel" if arg.name == "stride" else "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def fmt_type(arg) -> str:
    if arg.type.bare_words and arg.type.name not in TYPE_NAMES:
        return " or ".join(f"`{w}`" for w in arg.type.bare_words)
    return TYPE_NAMES.get(arg.type.name, arg.type.name)


def fmt_bounds(arg) -> str:
    if arg.min is not None and arg.max is not None and not arg.exclusive_min:
        return f"{arg.min:g} to {arg.max:g}"
    parts = []
    if arg.min is not None:
        parts.append(f"> {arg.min:g}" if arg.exclusive_min else f"≥ {arg.min:g}")
    if arg.max is not None:
        parts.append(f"≤ {arg.max:g}")
    return ", ".join(parts)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def args_table(args) -> list[str]:
    if not args:
        return ["No arguments."]
    lines = ["| argument | type | default | meaning |", "| --- | --- | --- | --- |"]
    for arg in args:
        meaning = arg.doc or ARG_NOTES.get(arg.name, "")
        bounds = fmt_bounds(arg)
        if bounds:
            meaning = f"{meaning} ({bounds})" if meaning else bounds
        lines.append(f"| `{arg.name}` | {cell(fmt_type(arg))} | {fmt_default(arg)} | "
                     f"{cell(meaning)} |")
    return lines


def _sig_default(arg) -> str:
    return "none" if arg.default is None else fmt_default(arg).strip("`")


def signature(op) -> str:
    parts = []
    for arg in op.args:
        parts.append(arg.name if arg.required else f"{arg.name} = {_sig_default(arg)}")
    return f"{op.name}({', '.join(parts)})" if parts else op.name


def ops_reference() -> str:
    ops = {n: o for n, o in all_ops().items() if o.role in ("layer", "loss")}
    out = []
    families = [f for f, _ in FAMILIES]
    extra = sorted({o.family for o in ops.values()} - set(families))
    for family, title in FAMILIES + [(f, f.capitalize()) for f in extra]:
        members = [o for o in ops.values() if o.family == family]
        if not members:
            continue
        out += [f"### {title}", ""]
        for op in members:
            details = DETAILS.get(op.name, {})
            out += [f"#### `{op.name}`", ""]
            if op.role == "loss":
                extra = "".join(f", {a.name} = {_sig_default(a)}" for a in op.args)
                usage = f"`loss {op.name}(prediction, target{extra})`"
            elif op.arity is None:
                usage = f"`(a, b, ...) -> {signature(op)}`"
            else:
                usage = f"`x -> {signature(op)}`"
            out += [usage, "", op.doc, ""]
            out += args_table(op.args) + [""]
            if details.get("shape"):
                out += [f"**Shape:** {details['shape']}", ""]
            if op.role == "layer":
                out += [f"**Parameters:** {details.get('params') or 'none.'}", ""]
            if details.get("example"):
                out += ["```net", details["example"], "```", ""]
    return "\n".join(out).rstrip() + "\n"


def train_reference() -> str:
    out = ["#### Scalar settings", "",
           "| setting | type | default | range | meaning |", "| --- | --- | --- | --- | --- |"]
    from netlang.ir.train_config import TrainConfig
    defaults = TrainConfig()
    for key, (kind, low, high, what) in SCALAR_SETTINGS.items():
        default = getattr(defaults, key)
        default = "none" if default is None else f"`{default}`"
        rng = f"{low} to {high}" if high is not None else f"≥ {low}"
        out.append(f"| `{key}` | {'int' if kind is int else 'number'} | {default} | {rng} | {what} |")
    for title, table in (("Optimizers", OPTIMIZERS), ("Schedules", SCHEDULES),
                         ("Regularizers", REGULARIZERS)):
        out += ["", f"#### {title}", ""]
        for entry in table.values():
            sig = ", ".join(a.name if a.required else f"{a.name} = {_sig_default(a)}"
                            for a in entry.args)
            out += [f"##### `{entry.name}`", "", f"`{entry.name}({sig})`" if sig else
                    f"`{entry.name}`", "", entry.doc, ""]
            if entry.args:
                out += args_table(entry.args) + [""]
    out += ["#### Metrics", "", ", ".join(f"`{m}`" + ("(k)" if m == "top_k" else "")
                                           for m in METRICS), ""]
    return "\n".join(out).rstrip() + "\n"


REGIONS = {"train-tables": train_reference, "ops": ops_reference}


def render_into(text: str) -> str:
    for name, fn in REGIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: no markers for the generated region `{name}`")
        text = pattern.sub(lambda m: m.group(1) + "\n" + fn() + "\n" + m.group(2), text)
    return text


def main(argv) -> int:
    if "--write" in argv:
        DOC.write_text(render_into(DOC.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    print(train_reference())
    print(ops_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
