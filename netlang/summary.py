"""The model summary behind `netlang check`: one row per layer, with parameters and multiply-adds."""

from __future__ import annotations

import dataclasses
import html

from netlang.ir.graph import Graph
from netlang.ir.train_config import phases_of
from netlang.ir.types import format_shape
from netlang.ops import get_op


@dataclasses.dataclass
class LayerRow:
    """One layer of the summary: its output shape, own parameters and multiply-adds."""

    name: str
    op: str
    shape: tuple
    params: int
    macs: int
    inputs: list


@dataclasses.dataclass
class Summary:
    """What `netlang check` and `model.summary()` show; prints as the table."""

    rows: list
    total_params: int
    trainable_params: int
    non_trainable_params: int
    buffers: int
    total_macs: int
    inputs: dict
    outputs: dict
    losses: list
    phases: dict = dataclasses.field(default_factory=dict)  # phase → its loss terms

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        # A REPL shows the table, not a dump of the dataclass's fields.
        return self.render()

    def _repr_html_(self) -> str:
        """The table as HTML, for notebooks."""
        head = "".join(f"<th>{h}</th>" for h in ("Layer", "Op", "Output shape", "Params",
                                                 "Mult-adds"))
        body = "".join(
            f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(r.op)}</td>"
            f"<td>{html.escape(format_shape(r.shape))}</td><td>{r.params:,}</td>"
            f"<td>{r.macs:,}</td></tr>" for r in self.rows)
        totals = "<br>".join(html.escape(line) for line in self._totals())
        return f"<table><tr>{head}</tr>{body}</table><p>{totals}</p>"

    def to_json(self) -> dict:
        """The summary as JSON-ready data (what `netlang check --json` prints)."""
        return {
            "layers": [{"name": r.name, "op": r.op, "shape": list(r.shape), "params": r.params,
                        "macs": r.macs, "inputs": r.inputs} for r in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "buffers": self.buffers,
            "total_macs": self.total_macs,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "losses": self.losses,
            **({"phases": self.phases} if self.phases else {}),
        }

    def render(self, title: str = "") -> str:
        """The table `netlang check` prints: one row per layer, then the totals."""
        header = ("Layer", "Op", "Output shape", "Params", "Mult-adds")
        body = [(r.name, r.op, format_shape(r.shape), f"{r.params:,}", f"{r.macs:,}") for r in self.rows]
        widths = [max(len(str(row[i])) for row in [header] + body) for i in range(5)]
        rule = "─" * (sum(widths) + 8)

        def line(row):
            return (f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  "
                    f"{row[3]:>{widths[3]}}  {row[4]:>{widths[4]}}")
        out = []
        if title:
            out.append(title)
        out += [rule, line(header), rule]
        out += [line(row) for row in body]
        out.append(rule)
        out += self._totals()
        return "\n".join(out)

    def _totals(self) -> list[str]:
        lines = [f"Total params: {self.total_params:,}",
                 f"Trainable params: {self.trainable_params:,}",
                 f"Non-trainable params: {self.non_trainable_params:,}"]
        if self.buffers:
            lines.append(f"Buffers (running statistics): {self.buffers:,}")
        lines.append(f"Mult-adds per example: {self.total_macs:,}")
        lines.append("Outputs: " + ", ".join(f"{k} {format_shape(v)}" for k, v in self.outputs.items()))
        if self.phases:   # named training phases: each one's losses; the model's is the last's
            lines += [f"Losses of phase {name}: " + _sum_text(terms)
                      for name, terms in self.phases.items()]
        elif self.losses:
            lines.append("Losses: " + _sum_text(self.losses))
        return lines


def _loss_term_text(graph: Graph, node) -> str:
    """A loss as the summary shows it: `op(operands)` for a loss op, and for a term written as
    an expression (an internal op averages it over the batch) the expression as written."""
    d = graph.nodes[node]
    loc = d["loc"]
    if get_op(d["op"]).role != "loss" and loc is not None and loc.source and \
            loc.end_line == loc.line and loc.end_column:
        return loc.source.splitlines()[loc.line - 1][loc.column - 1:loc.end_column - 1]
    operands = ", ".join(graph.nodes[o]["layer"] for o in d["inputs"])
    return f"{d['op']}({operands})"


def summarize(graph: Graph) -> Summary:
    """The summary of a lowered graph: one row per layer and input, in execution order."""
    # Frozen: a parameter that no training phase (or the one train section) updates.
    phases = phases_of(graph)
    rows = []
    param_nodes = graph.parameters()
    for node in graph.topological_order():
        data = graph.nodes[node]
        if data["role"] not in ("layer", "input"):
            continue
        own = [o for o in data["inputs"] if graph.nodes[o]["role"] == "param"
               and graph.nodes[o]["layer"] == data["name"]]
        params = sum(graph.type_of(o).size for o in own)
        macs = 0
        if data["role"] == "layer":
            op = get_op(data["op"])
            macs = op.count_macs([graph.type_of(o) for o in data["inputs"]], data["type"], data["attrs"])
        inputs = [graph.nodes[o]["layer"] for o in data["inputs"]
                  if graph.nodes[o]["role"] in ("layer", "input")]
        rows.append(LayerRow(data["name"], data["op"], data["type"].shape, params, macs, inputs))
    total = sum(graph.type_of(n).size for n in param_nodes.values())
    frozen_count = sum(graph.type_of(n).size for n in param_nodes.values()
                       if not any(phase.config.updates_layer(graph.nodes[n]["layer"])
                                  for phase in phases))
    buffers = sum(graph.type_of(n).size for n in graph.buffers().values())
    return Summary(
        rows=rows, total_params=total, trainable_params=total - frozen_count,
        non_trainable_params=frozen_count, buffers=buffers,
        total_macs=sum(r.macs for r in rows),
        inputs={k: graph.type_of(v).shape for k, v in graph.graph["inputs"].items()},
        outputs={k: graph.type_of(v).shape for k, v in graph.graph["outputs"].items()},
        losses=_loss_terms(graph, graph.graph.get("losses", [])),
        phases={phase.name: _loss_terms(graph, phase.losses) for phase in phases
                if phase.name is not None})


def _loss_terms(graph: Graph, losses) -> list:
    """`mse(B2, t)`, `0.5 × cross_entropy(head, label)`: each loss term, named by its layers."""
    terms = []
    for node, weight in losses:
        term = _loss_term_text(graph, node)
        terms.append(term if weight == 1 else "-" + term if weight == -1
                     else f"{weight:g} × {term}")
    return terms


def _sum_text(terms: list) -> str:
    """Loss terms joined into one sum, a negative weight read as a subtraction: `a - 0.1 × b`."""
    return terms[0] + "".join(f" - {t[1:]}" if t.startswith("-") else f" + {t}" for t in terms[1:])
