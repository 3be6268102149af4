"""The public Python surface: `netlang.compile(...)` and the `Model` it returns."""

from __future__ import annotations

import os

from netlang.ir.graph import Graph
from netlang.lower import lower_source
from netlang.summary import Summary, summarize


class Model:
    """A compiled `.net` model: its graph IR, shapes and summary.

    Later stages add training and running to this same object.
    """

    def __init__(self, graph: Graph, path: str):
        self.graph = graph
        self.path = path

    @property
    def inputs(self) -> dict:
        """Input name → full shape (batch dimension first, as None)."""
        return {k: self.graph.type_of(v).shape for k, v in self.graph.graph["inputs"].items()}

    @property
    def outputs(self) -> dict:
        return {k: self.graph.type_of(v).shape for k, v in self.graph.graph["outputs"].items()}

    @property
    def shapes(self) -> dict:
        """Every node's name → its inferred full shape."""
        return {d["name"]: d["type"].shape for _, d in self.graph.nodes(data=True)}

    @property
    def train_config(self):
        return self.graph.graph["train"]

    @property
    def source_hash(self) -> str:
        return self.graph.graph["source_hash"]

    def summary(self) -> Summary:
        return summarize(self.graph)

    def __repr__(self) -> str:
        s = self.summary()
        return f"<netlang.Model {self.path} params={s.total_params:,} outputs={list(self.outputs)}>"


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith(".net") or os.path.exists(text)) and "->" not in text


def compile(source_or_path, *, path: str | None = None) -> Model:
    """Compile `.net` source text, or the file at a path, into a `Model`.

    A `str` that names an existing file or ends in `.net` (and has no newline) is
    read as a path; anything else is source text.  Raises `netlang.NetlangError`.
    """
    if isinstance(source_or_path, os.PathLike) or (isinstance(source_or_path, str)
                                                   and _looks_like_path(source_or_path)):
        file_path = os.fspath(source_or_path)
        graph = lower_source(None, file_path)
        return Model(graph, file_path)
    if not isinstance(source_or_path, str):
        raise TypeError("netlang.compile takes a path or .net source text")
    name = path or "<string>"
    if not source_or_path.strip():
        from netlang.errors import NetlangFileError
        raise NetlangFileError(f"{name} is empty: a model needs at least one `input`")
    graph = lower_source(source_or_path, name)
    return Model(graph, name)


def load(path, **options):
    raise NotImplementedError("loading trained weights arrives with training (issue 3)")
