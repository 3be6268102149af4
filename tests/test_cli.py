"""The `netlang` command line as a package: dispatch, did-you-mean, flag wording, packaging."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from conftest import run_cli as run

import netlang
from netlang.cli import COMMANDS, in_flag_words
from netlang.errors import UsageError, WeightsError

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "examples" / "xor.net")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())



def command_help(capsys, command: str) -> str:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    return " ".join(out.split())  # argparse wraps long choice lists


@pytest.mark.parametrize("word, suggestion", [("trian", "train"), ("evl", "eval"),
                                              ("predcit", "predict"), ("chek", "check")])
def test_an_unknown_command_gets_did_you_mean_in_one_line(capsys, word, suggestion):
    code, out, err = run(capsys, word, XOR)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"netlang: error: unknown command `{word}` (did you mean `{suggestion}`?) "
        f"(commands: {', '.join(COMMANDS)})"]


def test_an_unknown_command_without_a_close_name_lists_the_commands(capsys):
    code, _, err = run(capsys, "examples/xor.net")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "did you mean" not in err and "commands: check, graph, fmt, train" in err


def test_every_command_has_help_and_the_top_level_lists_them_all(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(name in out for name in COMMANDS)
    for name in COMMANDS:
        assert command_help(capsys, name).startswith(f"usage: netlang {name} ")


def test_device_choices_are_the_same_everywhere_and_include_reference(capsys):
    with_device = [name for name in COMMANDS if "--device" in command_help(capsys, name)]
    assert set(with_device) == {"train", "eval", "predict", "bench", "saliency", "sample",
                                "attack", "warmup"}
    for name in with_device:
        assert "--device {cpu,cuda,auto,reference}" in command_help(capsys, name), name


def test_commands_that_load_weights_have_the_force_their_errors_name(capsys):
    """A weights mismatch is worded as `--force` by the CLI: every command that loads
    weights must have that flag."""
    for name in COMMANDS:
        text = command_help(capsys, name)
        if "--weights" in text:
            assert "--force" in text, name


def test_api_keywords_become_flags_only_where_the_command_has_them():
    message = "run/ was trained from a different model source; pass force=True to resume"
    assert in_flag_words(message, Namespace(force=False)) == \
        "run/ was trained from a different model source; pass --force to resume"
    assert in_flag_words(message, Namespace()) == message
    assert in_flag_words("use `clip_norm=True`", Namespace(clip_norm=None)) == "use --clip-norm"


def test_the_api_names_keywords_and_the_cli_names_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "train", XOR, "--epochs", "1", "--out", out, "--device", "reference",
               "-q")[0] == 0
    changed = tmp_path / "changed.net"
    changed.write_text(Path(XOR).read_text() + "\n# changed\n")

    with pytest.raises(WeightsError) as info:  # Python: the keyword
        netlang.load(changed, weights=out, device="reference")
    assert "pass force=True to load these weights anyway" in info.value.message
    assert "--force" not in info.value.message
    for command in (["eval", changed, "--weights", out],
                    ["predict", changed, "x.npy", "--weights", out],
                    ["saliency", changed, "x.npy", "--weights", out]):
        code, _, err = run(capsys, *command)  # the command line: the flag
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "pass --force to load these weights anyway" in err and "force=True" not in err

    model = netlang.compile(XOR)
    model.to("reference")
    with pytest.raises(UsageError) as info:
        model.fit(data="xor", epochs=1, out=out)
    assert "resume=True, or pass force=True to start over" in info.value.message
    code, _, err = run(capsys, "train", XOR, "--epochs", "1", "--out", out)
    assert code == 2 and "continue it with --resume, or pass --force to start over" in err


def test_data_names_read_in_any_case_like_the_loader_and_are_recorded_its_way(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", XOR, "--data", "BLOBS", "--epochs", "1", "--out", out,
                       "--device", "reference", "-q")
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["data"] == "blobs"
    code, stdout, err = run(capsys, "eval", XOR, "--weights", out, "--data", "Xor",
                            "--device", "reference")
    assert code == 0, err
    assert stdout.splitlines()[0] == "xor test: 4 examples"
    code, _, err = run(capsys, "train", XOR, "--data", "Blobz", "--device", "reference")
    assert code == 2 and "unknown data set `Blobz` (did you mean `blobs`?)" in err


def test_paths_given_to_data_keep_their_spelling(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", XOR, "--data", "Table.CSV", "--device", "reference")
    assert code == 2 and "Table.CSV" in err


def test_check_loads_neither_the_training_loop_nor_other_commands():
    """Start-up: each command imports only its own module's dependencies, and the
    API never imports the command line."""
    code = ("import sys\n"
            "import netlang.api, netlang.bench, netlang.saliency\n"
            "assert not [m for m in sys.modules if m.startswith('netlang.cli')], 'api -> cli'\n"
            "from netlang.cli import main\n"
            f"assert main(['check', {XOR!r}]) == 0\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('netlang.cli.')\n"
            "                or m in ('netlang.train.loop', 'numba'))\n"
            "assert loaded == ['netlang.cli.check', 'netlang.cli.common'], loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_and_the_entry_point_reach_the_same_main():
    result = subprocess.run([sys.executable, "-m", "netlang.cli", "trian"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "did you mean `train`" in result.stderr
    assert pyproject()["project"]["scripts"]["netlang"] == "netlang.cli:main"


def test_every_package_of_netlang_is_shipped():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "netlang").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
