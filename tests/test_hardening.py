"""The reproducers of issue 18 (hostile and broken input), each small and fast.

Front end: text that is not Unicode, import chains and the import policy, sizes that drive
work (stacked layers, blocks of repeats of empty blocks), diagnostics that cannot forge lines
or drive a terminal, a CLI path that is always a path.  The kernel cache: private folders, a
tampered or cut-short module never run, Numba's damaged files a cache miss.  Data: sizes
checked before anything is allocated or decompressed; a loss stuck at the clamp is divergence.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.data import load_dataset
from netlang.data.files import MAX_DATA_BYTES, load_csv, load_npz
from netlang.data.idx import MAX_IDX_BYTES, read_idx
from netlang.errors import (
    DataError,
    Diagnostic,
    NetlangError,
    NetlangImportError,
    NetlangSyntaxError,
    SourceLocation,
    UsageError,
    printable,
)
from netlang.train.divergence import check_not_stuck

ROOT = Path(__file__).resolve().parent.parent


def compile_error(source_or_path, seconds: float = 5.0, **options) -> NetlangError:
    """The NetlangError compiling raises, within `seconds`."""
    start = time.perf_counter()
    with pytest.raises(NetlangError) as info:
        netlang.compile(source_or_path, **options)
    assert time.perf_counter() - start < seconds
    return info.value


# ---- text that is not text -----------------------------------------------------------------

@pytest.mark.parametrize("source, column", [
    ("input x:[]#\ud800", 12),
    ('import"\ud800"', 8),
    ('input x:[]t="\udfff"', 14),
    ('import"\x00"', 8),
])
def test_lone_surrogates_and_nul_are_positioned_errors(source, column):
    error = compile_error(source)
    assert isinstance(error, NetlangSyntaxError)
    assert (error.line, error.column) == (1, column)
    error.render().encode("utf-8")  # printable: the surrogate is escaped, never echoed


# ---- imports -------------------------------------------------------------------------------

def _import_chain(directory: Path, length: int) -> Path:
    for i in range(length):
        body = f'import "m{i + 1}.net"\n' if i + 1 < length else "const c = 1\n"
        (directory / f"m{i}.net").write_text(body, "utf-8")
    main_file = directory / "main.net"
    main_file.write_text('import "m0.net"\ninput x: [2]\n', "utf-8")
    return main_file


def test_a_long_import_chain_is_refused_whatever_the_recursion_limit(tmp_path):
    main_file = _import_chain(tmp_path, 500)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # the depth is counted; Python's stack is never what stops it
    try:
        error = compile_error(main_file, seconds=20)
    finally:
        sys.setrecursionlimit(limit)
    assert isinstance(error, NetlangImportError)
    assert "imports nested more than 32 deep" in error.message
    assert error.path.endswith(".net") and error.line == 1


def test_a_chain_within_the_limit_compiles(tmp_path):
    netlang.compile(_import_chain(tmp_path, 20))


@pytest.mark.parametrize("target", ["/etc/passwd", "secret.txt", "link.net"])
def test_only_net_files_are_imported_and_nothing_else_is_echoed(tmp_path, target):
    (tmp_path / "secret.txt").write_text("SECRET-LINE:0:0\n", "utf-8")
    (tmp_path / "link.net").symlink_to(tmp_path / "secret.txt")
    main_file = tmp_path / "main.net"
    main_file.write_text(f'import "{target}"\ninput x: [2]\n', "utf-8")
    error = compile_error(main_file)
    assert isinstance(error, NetlangImportError)
    assert error.message == f"`{target}` is not a netlang file (an import names a `.net` file)"
    assert (error.path, error.line, error.column) == (str(main_file), 1, 1)
    assert "SECRET" not in error.render()


def test_imports_resolve_from_the_importing_files_folder_and_may_climb(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "shared.net").write_text("const width = 3\n", "utf-8")
    (tmp_path / "lib" / "blocks.net").write_text(
        'import "../shared.net"\nblock wide() {\n  input x\n  output y = x -> dense(width)\n}\n',
        "utf-8")
    (tmp_path / "main.net").write_text(
        f'import "lib/blocks.net"\nimport "{tmp_path / "shared.net"}"\n'
        'input x: [2]\noutput y = x -> wide()\n', "utf-8")
    model = netlang.compile(tmp_path / "main.net")
    assert model.summary() is not None


# ---- sizes that drive work -----------------------------------------------------------------

@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
def test_stacked_recurrent_layers_are_bounded_before_any_is_built(op):
    error = compile_error(f"input x: [3, 4]\noutput y = x -> {op}(4, layers = 10**9)", seconds=3)
    assert "`layers` must be at most 256" in error.message and error.line == 2


def test_stacked_layers_times_repeats_are_bounded():
    error = compile_error("input x: [3, 4]\n"
                          "output y = x -> lstm(4, layers = 256, sequences = true) * 1000",
                          seconds=20)
    assert "parameter tensors" in error.message


def test_blocks_of_repeats_of_empty_blocks_stop_at_the_layer_limit():
    error = compile_error("block a() { input x output y = x }\n"
                          "block b() { input x output y = x -> a() * 1000 }\n"
                          "block c() { input x output y = x -> b() * 1000 }\n"
                          "input x: [2]\noutput y = x -> c() * 1000\n", seconds=10)
    assert "more than 20,000 layers" in error.message


# ---- what diagnostics echo -----------------------------------------------------------------

def test_a_newline_in_a_string_cannot_forge_a_diagnostic_line():
    error = compile_error('const s = "same\\n/etc/evil.net:1:1: error: forged"\n'
                          "input x: [2]\noutput y = x -> dense(s)\n")
    lines = error.render().split("\n")
    assert not any(line.startswith("/etc/evil.net") for line in lines)
    assert "\\n/etc/evil.net" in lines[0]


def test_terminal_escapes_are_escaped_in_the_message_and_the_source_line():
    error = compile_error('input x: [2]\noutput y = x -> dense("\x1b[31mred")\n')
    rendered = error.render()
    assert "\x1b" not in rendered and "\\x1b[31mred" in rendered
    excerpt, caret = rendered.split("\n")[1:3]
    assert caret.index("^") == excerpt.index('"')  # the replacement keeps the caret aligned


def test_a_long_identifier_is_echoed_cut():
    error = compile_error("input x: [2]\noutput y = x -> " + "a" * 1_000_000 + "\n", seconds=10)
    assert len(error.message) < 200 and "…`" in error.message
    assert len(error.render()) < 1000


def test_printable_escapes_and_cuts():
    assert printable("a\nb\x1b\ud800\u202e") == "a\\nb\\x1b\\ud800\\u202e"
    assert printable("`" + "x" * 81 + "` and `y`") == "`" + "x" * 80 + "…` and `y`"
    assert printable("`" + "x" * 80 + "`") == "`" + "x" * 80 + "`"
    assert len(printable("z" * 10_000)) == 2000
    # The path of a location is escaped too: a path cannot forge a line either.
    diagnostic = Diagnostic("bad", SourceLocation("a\nb.net", 1, 1))
    assert diagnostic.render() == "a\\nb.net:1:1: error: bad"


def test_a_cli_path_is_always_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "input x: [2]\ny = x -> dense(2).net"]) == 2
    assert main(["check", "a\nb.net"]) == 2
    err = capsys.readouterr().err.strip().split("\n")
    assert err == ["error: no such file: input x: [2]\\ny = x -> dense(2).net",
                   "error: no such file: a\\nb.net"]


# ---- the kernel cache ----------------------------------------------------------------------

@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """A fresh kernel cache folder; the modules loaded from it are forgotten afterwards (only
    those: forgetting a Numba module imported lazily during the test would make Numba register
    its types twice when it is imported again)."""
    directory = tmp_path / "kernels"
    monkeypatch.setenv("NETLANG_CACHE", str(directory))
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(directory)):
            del sys.modules[name]


def _load(source: str, name: str):
    from netlang.runtime.cpu import _load_module
    sys.modules.pop(name, None)
    return _load_module(source, name, "a test module")


def test_the_kernel_cache_is_created_private(kernel_cache):
    _load("VALUE = 1\n", "hd_private")
    assert stat.S_IMODE(kernel_cache.stat().st_mode) == 0o700


def test_a_kernel_cache_others_can_write_is_refused(kernel_cache):
    kernel_cache.mkdir(mode=0o700)
    os.chmod(kernel_cache, 0o777)
    with pytest.raises(UsageError, match="writable by other users \\(mode 0777\\)"):
        _load("VALUE = 1\n", "hd_shared")
    assert list(kernel_cache.iterdir()) == []


@pytest.mark.parametrize("damage", ["append", "truncate", "binary"])
def test_a_tampered_module_is_never_run_and_is_rebuilt(kernel_cache, tmp_path, capsys, damage):
    source = "VALUE = 41 + 1\n"
    _load(source, "hd_tamper")
    (path,) = kernel_cache.glob("nl_*.py")
    marker = tmp_path / "ran"
    if damage == "append":
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"open({str(marker)!r}, 'w').write('ran')\n")
    elif damage == "truncate":
        path.write_text(source[:5], "utf-8")
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    module = _load(source, "hd_tamper")
    assert module.VALUE == 42 and not marker.exists()
    assert path.read_text("utf-8") == source
    notice = capsys.readouterr().err.strip()
    assert notice.startswith(f"netlang: kernel cache file {path}") and notice.endswith("; rebuilt")
    assert "\n" not in notice


NUMBA_SOURCE = "from numba import njit\n\n@njit(cache=True)\ndef bump(x):\n    return x + 1\n"


@pytest.mark.parametrize("which", ["nbi", "nbc"])
def test_damaged_numba_cache_files_are_a_cache_miss(kernel_cache, capsys, which):
    module = _load(NUMBA_SOURCE, "hd_numba")
    assert module.bump(1) == 2
    # Numba's cache of it: beside the module, or under NUMBA_CACHE_DIR where that is set.
    (damaged,) = Path(module.bump._cache.cache_path).glob(f"*.bump-*.{which}")
    damaged.write_bytes(damaged.read_bytes()[:20])
    assert _load(NUMBA_SOURCE, "hd_numba").bump(2) == 3
    notice = capsys.readouterr().err.strip()
    assert "Numba's cache of bump" in notice and notice.endswith("recompiling")
    assert _load(NUMBA_SOURCE, "hd_numba").bump(3) == 4  # rebuilt: loads without a notice
    assert capsys.readouterr().err == ""


# ---- data ----------------------------------------------------------------------------------

SMALL = {"x_train": np.ones((4, 2), np.float32), "y_train": np.arange(4) % 2,
         "x_test": np.ones((2, 2), np.float32), "y_test": np.arange(2)}


def one_line(call, *args, match: str, **kwargs) -> str:
    """The DataError `call` raises: one line, matching `match`."""
    with pytest.raises(DataError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _archive(path: Path, first: bytes, compression=zipfile.ZIP_STORED, **zip_options) -> Path:
    with zipfile.ZipFile(path, "w", compression, **zip_options) as archive:
        archive.writestr("x_train.npy", first)
        for key, value in SMALL.items():
            if key != "x_train":
                archive.writestr(f"{key}.npy", _npy(value))
    return path


def test_an_npy_member_claiming_a_huge_shape_is_refused_before_allocation(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2 ** 40, 2)})
    path = _archive(tmp_path / "huge.npz", header.getvalue() + bytes(16))
    one_line(load_npz, path, match=r"x_train declares shape \(1099511627776, 2\) of float32")


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path):
    zeros = _npy(np.zeros((2 ** 24 + 1, 1), np.float32))  # 64 MiB of zeros: deflates ~1000:1
    path = _archive(tmp_path / "bomb.npz", zeros, zipfile.ZIP_DEFLATED, compresslevel=1)
    assert path.stat().st_size < 2 ** 20
    one_line(load_npz, path, match="more than a data set compresses .*zip bomb")


def test_a_member_beyond_the_data_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("netlang.data.files.MAX_DATA_BYTES", 100)
    path = _archive(tmp_path / "big.npz", _npy(np.ones((100, 2), np.float32)))
    one_line(load_npz, path, match="netlang loads data of up to 100 bytes")
    assert MAX_DATA_BYTES == 8 * 2 ** 30


def test_real_archives_still_load(tmp_path):
    np.savez(tmp_path / "plain.npz", **SMALL)
    np.savez_compressed(tmp_path / "packed.npz", **SMALL)
    for name in ("plain.npz", "packed.npz"):
        assert load_npz(tmp_path / name)[0].shape == (4, 2)


def test_a_csv_field_over_the_csv_limit_is_one_line(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text('1,2\n3,"' + "x" * 200_000 + '"\n', "utf-8")
    one_line(load_csv, path, match=r"wide.csv:2: field larger than field limit")


def test_a_gzip_bomb_as_mnist_is_refused_after_the_header_says_enough(tmp_path):
    header = bytes([0, 0, 8, 1]) + np.array([16], ">u4").tobytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = compressor.compress(header) + b"".join(
        compressor.compress(bytes(2 ** 20)) for _ in range(64)) + compressor.flush()
    (tmp_path / "bomb.gz").write_bytes(bomb)  # 64 MiB of zeros after a 16-byte IDX
    start = time.perf_counter()
    one_line(read_idx, tmp_path / "bomb.gz", match="unexpected bytes after the IDX data")
    assert time.perf_counter() - start < 1.0  # read 17 bytes, not 64 MiB
    declared = bytes([0, 0, 8, 2]) + np.array([2 ** 20, 2 ** 20], ">u4").tobytes()
    (tmp_path / "declared.gz").write_bytes(gzip.compress(declared + bytes(100)))
    one_line(read_idx, tmp_path / "declared.gz", match=f"up to {MAX_IDX_BYTES:,} bytes")


def test_a_gzipped_idx_in_two_members_still_reads(tmp_path):
    data = bytes([0, 0, 8, 1]) + np.array([3], ">u4").tobytes() + bytes([1, 2, 3])
    (tmp_path / "two.gz").write_bytes(gzip.compress(data[:5]) + gzip.compress(data[5:]))
    assert read_idx(tmp_path / "two.gz").tolist() == [1, 2, 3]


def test_too_many_synthetic_samples_is_one_line():
    one_line(load_dataset, "xor", samples=10_000_000_000, match="samples must be an integer from 1")


def test_the_cli_refuses_too_many_samples(tmp_path, capsys):
    assert main(["train", str(ROOT / "examples" / "xor.net"), "--samples", "10000000000",
                 "--out", str(tmp_path / "run"), "--device", "reference"]) == 2
    assert "samples must be an integer from 1 to 10,000,000" in capsys.readouterr().err


# ---- divergence at a clamp -----------------------------------------------------------------

def test_a_loss_stuck_above_its_start_is_divergence():
    records = [{"loss": 0.6932}, {"loss": 50.0}, {"loss": 50.0}]
    check_not_stuck(records)  # two epochs at 50 are not yet stuck
    with pytest.raises(DataError, match="the loss has stayed at 50.0000 for 3 epochs"):
        check_not_stuck(records + [{"loss": 50.0}])


@pytest.mark.parametrize("losses", [
    [0.7, 0.35, 0.35, 0.35, 0.35],   # a plateau below the start: a local minimum, not divergence
    [0.7, 0.7, 0.7, 0.7],            # learning rate 0: nothing changes
    [0.6931, 0.69315, 0.69315, 0.69315],   # XOR at its saddle, a hair above the start
    [0.7, 2.0, 3.0, 4.0],            # worse, but still moving
])
def test_plateaus_and_moving_losses_are_not_divergence(losses):
    check_not_stuck([{"loss": loss} for loss in losses])


def test_xor_at_a_huge_learning_rate_stops_as_diverged(tmp_path, capsys):
    status = main(["train", str(ROOT / "examples" / "xor.net"), "--lr", "1e9", "--epochs", "8",
                   "--out", str(tmp_path / "run"), "--device", "reference"])
    assert status == 2
    assert "training diverged: the loss has stayed at 50.0000" in capsys.readouterr().err
