"""A long program cut into pieces (netlang/codegen/pieces.py): ResNet-18's training step is
cut, a short one is not; a program cut trains to the same bits as uncut; a piece whose name
is read after it makes the program be written uncut."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from conftest import random_batch

import netlang
from netlang.codegen import cpu as codegen_cpu
from netlang.codegen import pieces
from netlang.runtime.cpu import CpuEngine

ROOT = Path(__file__).resolve().parent.parent

# A width no other test uses: the generated modules are named by their source.
CNN = """
input image: [9, 9, 1]
input label: int32[]
output logits = image -> conv2d(3, 3) -> relu -> maxpool(2) -> flatten -> dense(11) -> tanh
    -> dropout(0.2) -> dense(3)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr=0.01)
  batch_size 4
  seed 5
}
"""


def _step_source(engine) -> tuple[str, list]:
    program = engine._training()[3].program
    return program.source, [source for _, source in program.parts if "def piece(" in source]


def test_a_long_training_step_is_cut_and_a_short_one_is_not():
    long = CpuEngine(netlang.compile(ROOT / "examples" / "resnet18.net").graph)
    source, cut = _step_source(long)
    calls = [line for line in source.splitlines() if line.startswith("    pieces")]
    assert len(cut) >= 4 and len(calls) >= len(cut)
    # What is left calls the pieces, the optimiser update's last, from Python.
    assert "@symbol_jit\ndef train_step(" not in source and "def train_step(" in source
    program = long._training()[3].program
    assert [name for name, _, _ in program.pieces] == [line.split("(")[0].strip()
                                                       for line in calls]
    # Each piece weighs the arrays it reads: the update, which reads every parameter, most.
    assert max(program.pieces, key=lambda piece: piece[2]) == program.pieces[-1]
    assert "parts" in cut[-1] and "lr" in program.pieces[-1][1]
    assert all(len(piece.splitlines()) < 3 * pieces.PIECE_LINES for piece in cut)
    short = CpuEngine(netlang.compile(ROOT / "examples" / "mlp.net").graph)
    assert _step_source(short)[1] == []


def test_a_cut_program_trains_to_the_same_bits_as_uncut(monkeypatch):
    model = netlang.compile(CNN)
    batch = random_batch(model.graph, 4, 3)

    def trained():
        engine = CpuEngine(model.graph, seed=5)
        for step in range(3):
            engine.train_step(batch, 0.01)
        return engine, {name: value.copy() for name, value in engine.params.items()}

    uncut_engine, uncut = trained()
    assert _step_source(uncut_engine)[1] == []
    monkeypatch.setattr(pieces, "PIECE_LINES", 12)
    monkeypatch.setattr(codegen_cpu, "PIECE_LINES", 12)
    cut_engine, cut = trained()
    assert len(_step_source(cut_engine)[1]) >= 3
    for name in uncut:
        assert np.array_equal(uncut[name], cut[name]), name


def test_a_piece_whose_name_is_read_after_it_is_unsound():
    writer = SimpleNamespace(part_imports=[("m", "worker", "workers3")])
    made = [({"v1", "s2", "workers3"}, "    v1 = a0.reshape((4, 4))\n    workers3(v1)"),
            ({"v5"}, "    v5 = a1.reshape((2,))\n    workers3(v5)")]
    assert pieces.sound(writer, made + [(set(), "    parts9(a2, lr)")])   # the update's piece
    assert not pieces.sound(writer, made + [(set(), "    parts9(v1, lr)")])
    made[1] = ({"v5"}, "    v5 = s2 + 1")
    assert not pieces.sound(writer, made)
