"""Generate the reference tables of docs/language.md from the registries.

    python docs/gen_ops_table.py            # print the generated Markdown
    python docs/gen_ops_table.py --write    # refresh docs/language.md in place

The argument tables (names, types, defaults, bounds, one-line docs) come from
the op registry (`netlang.ops`) and the train-section schemas
(`netlang.ops.optim`, `netlang.ir.train_config`), so they cannot drift from what
the compiler accepts; so do each op's shape rule, parameter layout and example
in words (`OpDef.document`, beside the op's definition).  Each generated region of the
document sits between `<!-- BEGIN GENERATED: name -->` and
`<!-- END GENERATED: name -->` markers; everything outside them is hand-written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from netlang.ir.train_config import METRICS, SCALAR_SETTINGS
from netlang.ops import all_ops
from netlang.ops.optim import OPTIMIZERS, REGULARIZERS, SCHEDULES

DOC = Path(__file__).resolve().parent / "language.md"

# The order and titles of the op families in the reference.
FAMILIES = [
    ("dense", "Fully connected and embedding"),
    ("conv", "Convolution"),
    ("pool", "Pooling"),
    ("activation", "Activations"),
    ("norm", "Normalisation and dropout"),
    ("noise", "Noise and sampling"),
    ("rbm", "Energy-based models"),
    ("recurrent", "Recurrent"),
    ("reshape", "Reshaping"),
    ("merge", "Merging branches"),
    ("math", "Tensor math"),
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
            out += [f"#### `{op.name}`", ""]
            if op.role == "loss":
                extra = "".join(f", {a.name} = {_sig_default(a)}" for a in op.args)
                usage = f"`loss {op.name}({', '.join(op.operand_names)}{extra})`"
            elif op.arity is None:
                usage = f"`(a, b, ...) -> {signature(op)}`"
            else:
                usage = f"`x -> {signature(op)}`"
            out += [usage, "", op.doc, ""]
            out += args_table(op.args) + [""]
            if op.shape_doc:
                out += [f"**Shape:** {op.shape_doc}", ""]
            if op.role == "layer":
                out += [f"**Parameters:** {op.params_doc or 'none.'}", ""]
            if op.example:
                out += ["```net", op.example, "```", ""]
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
