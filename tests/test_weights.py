"""Weights files, atomic writes and checkpoints (netlang.weights)."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from netlang import weights as W
from netlang.errors import WeightsError
from netlang.weights import checkpoints

HASH = "ab12" * 16
OTHER_HASH = "cd34" * 16


def params():
    rng = np.random.default_rng(0)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv1.bias": np.zeros(4, np.float32),
        "layer1.0.conv2d_1.weight": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "fc.bias": np.arange(10, dtype=np.float32),
    }


def raw_file(path, header: dict | bytes, data: bytes = b"", header_len=None):
    """Write a hand-made safetensors file (possibly broken on purpose)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def error(fn, *args, **kwargs) -> str:
    """The one-line reason of the WeightsError `fn` raises."""
    with pytest.raises(WeightsError) as info:
        fn(*args, **kwargs)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_replaces_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    W.atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_crash_keeps_old_file(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def crash(f):
        f.write(b"half of the new cont")
        raise exc("simulated crash")

    with pytest.raises(exc):
        W.atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_atomic_file_crash_creates_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError):
        with W.atomic_file(target) as f:
            f.write(b"x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


# --- weights files ----------------------------------------------------------------------------


def test_round_trip(tmp_path):
    p = params()
    p["scalar"] = np.asarray(np.float64(2.5))
    p["steps"] = np.arange(3, dtype=np.int64)
    p["mask"] = np.array([True, False])
    p["transposed"] = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not C-contiguous
    path = W.save_weights(tmp_path / "m.safetensors", p, {"note": "hi"}, source_hash=HASH)
    loaded, meta = W.load_weights(path, W.expected_of(p))
    assert loaded.keys() == p.keys()
    for name in p:
        assert loaded[name].dtype == p[name].dtype
        np.testing.assert_array_equal(loaded[name], p[name])
        assert loaded[name].flags.writeable
    assert meta["source_hash"] == HASH and meta["note"] == "hi"
    assert meta["netlang_version"]


def test_source_hash_from_metadata_and_required(tmp_path):
    path = W.save_weights(tmp_path / "m.safetensors", params(), {"source_hash": HASH})
    assert W.load_weights(path).metadata["source_hash"] == HASH
    with pytest.raises(ValueError):
        W.save_weights(tmp_path / "n.safetensors", params(), {})
    with pytest.raises(ValueError):
        W.save_weights(tmp_path / "n.safetensors", params(), source_hash="not hex!")


def test_unsavable_dtype_names_tensor(tmp_path):
    msg = error(W.save_weights, tmp_path / "m.safetensors",
                {"names": np.array(["a", "b"])}, source_hash=HASH)
    assert "`names`" in msg and "m.safetensors" in msg
    assert not (tmp_path / "m.safetensors").exists()


def test_source_hash_mismatch_on_load(tmp_path):
    path = W.save_weights(tmp_path / "m.safetensors", params(), source_hash=HASH)
    msg = error(W.load_weights, path, source_hash=OTHER_HASH)
    assert "different model source" in msg and "force=True" in msg and str(path) in msg
    assert W.load_weights(path, source_hash=OTHER_HASH, force=True).params
    assert W.load_weights(path, source_hash=HASH.upper()).params


def test_file_without_source_hash_is_accepted(tmp_path):
    from safetensors.numpy import save_file  # e.g. converted from PyTorch
    save_file({"fc.bias": np.zeros(2, np.float32)}, str(tmp_path / "t.safetensors"))
    loaded, meta = W.load_weights(tmp_path / "t.safetensors", source_hash=HASH)
    assert list(loaded) == ["fc.bias"] and meta == {}


def _truncated(tmp_path):
    path = W.save_weights(tmp_path / "t.safetensors", params(), source_hash=HASH)
    path.write_bytes(path.read_bytes()[:-7])
    return path


def _tensor(shape=(2,), dtype="F32", offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("make, expect", [
    (lambda d: d / "absent.safetensors", "no such weights file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "e.safetensors", (d / "e.safetensors").write_bytes(b""))[0], "empty"),
    (lambda d: (d / "s.safetensors", (d / "s.safetensors").write_bytes(b"\1\2\3"))[0],
     "too short"),
    (lambda d: (d / "r.safetensors",
                (d / "r.safetensors").write_bytes(np.random.default_rng(1).bytes(4096)))[0],
     "not a valid safetensors file"),
    (_truncated, "truncated: tensor `"),
    (lambda d: raw_file(d / "j.safetensors", b"{not json"), "header: not valid JSON"),
    (lambda d: raw_file(d / "l.safetensors", b"[1, 2]"), "not a JSON object"),
    (lambda d: raw_file(d / "h.safetensors", b"{}", header_len=2**40), "header claims"),
    (lambda d: raw_file(d / "m.safetensors", {"__metadata__": {"a": 1}}), "__metadata__"),
    (lambda d: raw_file(d / "k.safetensors", {"w": {"dtype": "F32"}}), "tensor `w` lacks"),
    (lambda d: raw_file(d / "b.safetensors", {"w": _tensor(dtype="BF16", offsets=(0, 4))},
                        b"\0" * 4), '`w` has dtype "BF16"'),
    (lambda d: raw_file(d / "n.safetensors", {"w": _tensor(shape=(-1,))}, b"\0" * 8),
     "`w` has an invalid shape"),
    (lambda d: raw_file(d / "z.safetensors", {"w": _tensor(shape=(3,))}, b"\0" * 8),
     "`w`: shape (3,) F32 needs 12 bytes"),
    (lambda d: raw_file(d / "o.safetensors", {"a": _tensor(), "b": _tensor()}, b"\0" * 8),
     "overlapping"),
    (lambda d: raw_file(d / "x.safetensors", {"a": _tensor()}, b"\0" * 12), "stray bytes"),
    (lambda d: raw_file(d / "d.safetensors", b'{"a": {}, "a": {}}'), "`a` is listed twice"),
])
def test_malformed_files(tmp_path, make, expect):
    path = make(tmp_path)
    msg = error(W.load_weights, path)
    assert expect in msg
    assert str(path) in msg


def test_malformed_file_through_expected_path(tmp_path):
    # The header is validated before any comparison with the model.
    path = _truncated(tmp_path)
    assert "truncated" in error(W.load_weights, path, W.expected_of(params()))


# --- fitting weights to a model ---------------------------------------------------------------


def test_name_and_shape_mismatch_messages(tmp_path):
    p = params()
    path = W.save_weights(tmp_path / "m.safetensors", p, source_hash=HASH)
    expected = W.expected_of(p)

    missing = dict(expected, **{"fc2.bias": ((10,), np.float32)})
    msg = error(W.load_weights, path, missing)
    assert "tensor `fc2.bias` is missing" in msg and "(10,) float32" in msg

    renamed = {("conv1.weights" if k == "conv1.weight" else k): v for k, v in expected.items()}
    msg = error(W.load_weights, path, renamed)
    assert "unexpected tensor `conv1.weight` (did you mean `conv1.weights`?)" in msg
    assert "tensor `conv1.weights` is missing" in msg

    reshaped = dict(expected, **{"fc.weight": ((5, 4), "float32")})
    msg = error(W.load_weights, path, reshaped)
    assert "tensor `fc.weight` has shape (10, 4) in file, model expects (5, 4)" in msg
    assert str(path) in msg

    retyped = dict(expected, **{"fc.bias": ((10,), "float64")})
    msg = error(W.load_weights, path, retyped)
    assert "`fc.bias` has dtype float32 in file, model expects float64" in msg


def test_many_problems_stay_on_one_line(tmp_path):
    path = W.save_weights(tmp_path / "m.safetensors", params(), source_hash=HASH)
    expected = {f"other{i}.weight": ((1,), "float32") for i in range(10)}
    assert "more" in error(W.load_weights, path, expected)


def test_strict_false_loads_subset(tmp_path):
    p = params()
    path = W.save_weights(tmp_path / "m.safetensors", p, source_hash=HASH)
    # A new head: fc has 3 classes now, a new layer exists, layer1 was dropped.
    expected = W.expected_of(p)
    del expected["layer1.0.conv2d_1.weight"]
    expected["fc.weight"] = ((3, 4), np.float32)
    expected["fc.bias"] = ((3,), np.float32)
    expected["head.weight"] = ((3, 3), np.float32)

    result = W.load_weights(path, expected, strict=False)
    loaded, _ = result
    assert sorted(loaded) == ["conv1.bias", "conv1.weight"]
    np.testing.assert_array_equal(loaded["conv1.weight"], p["conv1.weight"])
    report = result.report
    assert report.loaded == ["conv1.weight", "conv1.bias"]
    assert report.missing == ["head.weight"]
    assert report.unexpected == ["layer1.0.conv2d_1.weight"]
    assert set(report.mismatched) == {"fc.weight", "fc.bias"}
    assert not report.complete
    summary = report.summary()
    assert "loaded 2 of 5 tensors" in summary and "`head.weight`" in summary
    assert "\n" not in summary


# --- RNG state --------------------------------------------------------------------------------


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox])
def test_rng_json_round_trip(bit_generator):
    rng = np.random.Generator(bit_generator(1234))
    rng.standard_normal(7)
    data = json.loads(json.dumps(W.rng_state_to_json(rng)))  # survives real JSON
    ahead = rng.standard_normal(5)
    np.testing.assert_array_equal(W.rng_from_json(data).standard_normal(5), ahead)


def test_rng_from_bad_json():
    assert 'field "rng.bit_generator" must be one of PCG64' in error(
        W.rng_from_json, {"bit_generator": "os.system"})
    assert 'field "rng.state.state" is missing' in error(
        W.rng_from_json, {"bit_generator": "PCG64", "state": {}})


# --- checkpoints ------------------------------------------------------------------------------


def optimizer_state(p):
    return {f"m.{k}": np.full_like(v, 0.5) for k, v in p.items()} | {"t": np.asarray(3)}


def train_state(step, rng):
    return {"epoch": 2, "step": step, "schedule": {"position": step, "lr": np.float32(0.1)},
            "data_seed": 99, "rng": W.rng_state_to_json(rng), "config": {"batch": 8}}


def test_checkpoint_resume_round_trip(tmp_path):
    p = params()
    rng = np.random.default_rng(5)
    rng.random(3)
    run = tmp_path / "run"
    ckpt = W.save_checkpoint(run, params=p, optimizer_state=optimizer_state(p),
                             state=train_state(120, rng), source_hash=HASH)
    assert ckpt.name == "ckpt-00000120"
    assert sorted(f.name for f in ckpt.iterdir()) == [
        "optimizer.safetensors", "state.json", "weights.safetensors"]
    continued = rng.random(4)

    loaded = W.load_checkpoint(run, source_hash=HASH, expected=W.expected_of(p))
    assert loaded.path == ckpt and loaded.source_hash == HASH
    for name in p:
        np.testing.assert_array_equal(loaded.params[name], p[name])
    np.testing.assert_array_equal(loaded.optimizer_state["t"], np.asarray(3))
    assert loaded.state["step"] == 120 and loaded.state["config"] == {"batch": 8}
    assert loaded.state["schedule"]["lr"] == pytest.approx(0.1)
    np.testing.assert_array_equal(W.rng_from_json(loaded.state["rng"]).random(4), continued)
    assert W.find_weights(run) == ckpt / "weights.safetensors"
    assert W.find_weights(ckpt) == ckpt / "weights.safetensors"
    assert W.load_checkpoint(ckpt).checkpoint_id == loaded.checkpoint_id  # a ckpt dir itself


def test_checkpoint_keeps_previous_and_prunes(tmp_path):
    p = params()
    run = tmp_path / "run"
    rng = np.random.default_rng()
    names = [W.save_checkpoint(run, params=p, optimizer_state={}, state=train_state(s, rng),
                               source_hash=HASH).name for s in (10, 20, 30, 30)]
    assert names[-1] == "ckpt-00000030-2"  # same step twice: never reuse a directory
    assert sorted(e.name for e in run.iterdir()) == ["ckpt-00000030", "ckpt-00000030-2",
                                                     "latest"]
    assert W.load_checkpoint(run).path.name == "ckpt-00000030-2"


@pytest.mark.parametrize("fail_on", ["optimizer.safetensors", "state.json", "latest"])
def test_interrupted_checkpoint_leaves_previous_loadable(tmp_path, monkeypatch, fail_on):
    p = params()
    run = tmp_path / "run"
    rng = np.random.default_rng()
    W.save_checkpoint(run, params=p, optimizer_state=optimizer_state(p),
                      state=train_state(1, rng), source_hash=HASH)
    real = checkpoints.write_bytes

    def crashing(path, data):
        if path.name == fail_on:
            raise KeyboardInterrupt  # the process dies mid-save
        real(path, data)

    monkeypatch.setattr(checkpoints, "write_bytes", crashing)
    changed = {k: v + 1 for k, v in p.items()}
    with pytest.raises(KeyboardInterrupt):
        W.save_checkpoint(run, params=changed, optimizer_state={}, state=train_state(2, rng),
                          source_hash=HASH)
    loaded = W.load_checkpoint(run)
    assert loaded.state["step"] == 1
    np.testing.assert_array_equal(loaded.params["fc.bias"], p["fc.bias"])
    monkeypatch.setattr(checkpoints, "write_bytes", real)
    # The next successful save cleans up whatever the crash left behind.
    W.save_checkpoint(run, params=p, optimizer_state={}, state=train_state(3, rng),
                      source_hash=HASH)
    assert sorted(e.name for e in run.iterdir()) == ["ckpt-00000001", "ckpt-00000003", "latest"]


def test_checkpoint_source_hash_mismatch_and_force(tmp_path):
    p = params()
    run = tmp_path / "run"
    W.save_checkpoint(run, params=p, optimizer_state={}, state={"step": 5},
                      source_hash=HASH)
    msg = error(W.load_checkpoint, run, source_hash=OTHER_HASH)
    assert "was trained from a different model source" in msg
    assert "pass force=True to" in msg and str(run) in msg
    assert W.load_checkpoint(run, source_hash=OTHER_HASH, force=True).state == {"step": 5}


def test_bad_state_writes_nothing(tmp_path):
    run = tmp_path / "run"
    msg = error(W.save_checkpoint, run, params=params(), optimizer_state={},
                state={"step": 1, "fn": print}, source_hash=HASH)
    assert "JSON" in msg
    assert not run.exists()


def test_mixed_up_checkpoint_files(tmp_path):
    p = params()
    a = W.save_checkpoint(tmp_path / "a", params=p, optimizer_state={}, state={"step": 1},
                          source_hash=HASH)
    b = W.save_checkpoint(tmp_path / "b", params=p, optimizer_state={}, state={"step": 1},
                          source_hash=HASH)
    (a / "weights.safetensors").write_bytes((b / "weights.safetensors").read_bytes())
    assert "different checkpoint" in error(W.load_checkpoint, tmp_path / "a")


def test_broken_run_directories(tmp_path):
    assert "no such checkpoint directory" in error(W.load_checkpoint, tmp_path / "nope")
    assert "no checkpoint found" in error(W.load_checkpoint, tmp_path)
    (tmp_path / "latest").write_text("../../etc\n")
    assert "does not name a checkpoint" in error(W.load_checkpoint, tmp_path)
    (tmp_path / "latest").write_text("ckpt-00000007\n")
    assert "does not exist" in error(W.load_checkpoint, tmp_path)
    (tmp_path / "ckpt-00000007").mkdir()
    assert "incomplete" in error(W.load_checkpoint, tmp_path)
    (tmp_path / "ckpt-00000007" / "state.json").write_text("{}")
    assert "not a netlang checkpoint" in error(W.load_checkpoint, tmp_path)


@pytest.mark.parametrize("file, damage", [("weights.safetensors", "truncate"),
                                          ("optimizer.safetensors", "truncate"),
                                          ("state.json", "empty"), ("", "remove")])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, file, damage):
    p = params()
    run = tmp_path / "run"
    rng = np.random.default_rng()
    older = W.save_checkpoint(run, params=p, optimizer_state=optimizer_state(p),
                              state=train_state(10, rng), source_hash=HASH)
    newest = W.save_checkpoint(run, params={k: v + 1 for k, v in p.items()},
                               optimizer_state=optimizer_state(p), state=train_state(20, rng),
                               source_hash=HASH)
    bad = newest / file if file else newest
    if damage == "truncate":   # a disk that filled up mid-write
        bad.write_bytes(bad.read_bytes()[:-7])
    elif damage == "empty":
        bad.write_text("")
    else:                      # the checkpoint directory deleted by hand
        shutil.rmtree(bad)
    with pytest.warns(W.DamagedCheckpointWarning) as caught:
        loaded = W.load_checkpoint(run, source_hash=HASH, expected=W.expected_of(p))
    message = str(caught[0].message)
    assert "\n" not in message and str(bad if file else run / "latest") in message
    assert str(older) in message
    assert loaded.path == older and loaded.state["step"] == 10
    np.testing.assert_array_equal(loaded.params["fc.bias"], p["fc.bias"])
    if file == "weights.safetensors":   # the weights a run directory stands for fall back too
        with pytest.warns(W.DamagedCheckpointWarning):
            assert W.find_weights(run) == older / "weights.safetensors"


def test_a_damaged_only_checkpoint_is_an_error(tmp_path):
    p = params()
    ckpt = W.save_checkpoint(tmp_path, params=p, optimizer_state={}, state={"step": 3},
                             source_hash=HASH)
    weights = ckpt / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    assert "file is truncated" in error(W.load_checkpoint, tmp_path)
    assert "file is truncated" in error(W.find_weights, tmp_path)


def test_find_weights(tmp_path):
    path = W.save_weights(tmp_path / "m.safetensors", params(), source_hash=HASH)
    assert W.find_weights(path) == path
    assert "no such weights file" in error(W.find_weights, tmp_path / "x.safetensors")
    (tmp_path / "empty").mkdir()
    assert "holds no weights.safetensors" in error(W.find_weights, tmp_path / "empty")
