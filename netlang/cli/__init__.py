"""The `netlang` command line: one module per command, over the Python API.

`main` reads the command word first and imports only that command's module
(`netlang.cli.train`, `netlang.cli.check`, ...), so `netlang check` and `--help` never load
the training stack.  Each command module has `add_arguments(parser)` and `run(args)`; `run`
returns the exit status.  Errors are `NetlangError`s, printed here as one line with exit
status 2; the API spells its keywords (`force=True`) and this boundary puts them in the
command's own flags (`--force`).  The API never imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys

from netlang.errors import NetlangError, did_you_mean
from netlang.version import __version__

# Command word → (module under netlang.cli, one line of help), in the order `--help` lists them.
COMMANDS = {
    "check": ("check", "check a .net file and print a summary of its layers"),
    "graph": ("graph", "draw the computation graph (DOT, SVG or PNG)"),
    "fmt": ("fmt", "print a .net file in canonical form"),
    "train": ("train", "train a model; writes weights, checkpoints and a metrics log"),
    "eval": ("evaluate", "evaluate trained weights: loss, accuracy, confusion matrix"),
    "predict": ("predict", "class probabilities for an input (.npy or .png)"),
    "bench": ("bench", "time a model's forward pass and training step per batch"),
    "warmup": ("warmup", "compile a model's kernels ahead of time, into the disk caches"),
    "saliency": ("saliency", "draw which input pixels the predicted class depends on"),
    "attack": ("attack", "accuracy under adversarial examples (FGSM, PGD)"),
    "sample": ("sample", "samples of a generative model, or text a character model writes"),
    "export": ("export", "write a model's inference pass as an ONNX file"),
    "import": ("import_onnx", "read an ONNX model into a .net file and a run directory"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `netlang train: error: ...` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `netlang` parser; `command`'s arguments are added by its module, the other
    commands are listed by name and help only (their modules stay unimported)."""
    parser = _Parser(prog="netlang", description="Compile, check, train and run neural "
                                                 "networks written in .net files.")
    parser.add_argument("--version", action="version", version=f"netlang {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name == command:
            module = command_module(name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
    return parser


def command_module(name: str):
    """The module that implements command `name`."""
    # Imported by name on demand: only the command that runs pays for its dependencies.
    return importlib.import_module(f"netlang.cli.{COMMANDS[name][0]}")


# How the API names its keywords in messages, and the setting a message is about.
_KEYWORD = re.compile(r"`([a-z][a-z_]*)=([^`]*)`|\b([a-z][a-z_]*)=True\b")
_SETTING = re.compile(r"(^|: )training setting `([^`]*)`")   # what a message is about


def in_flag_words(message: str, args: argparse.Namespace) -> str:
    """An API message in the command's own words, where the command has the flag: a keyword
    the API names (`force=True`, `` `data=` ``, `` `epochs=N` ``, `` `device="cpu"` ``)
    becomes the flag (`--force`, `--data`, `--epochs N`, `--device cpu`), and a message about
    a "training setting `key=value`" names `--set key=value`."""
    def flag(match: re.Match) -> str:
        name = match[1] or match[3]
        value = match[2] if match[1] else "True"
        if not hasattr(args, name):
            return match[0]
        words = f"--{name.replace('_', '-')}"
        return words if value in ("", "True") else f"{words} {value.strip(chr(34))}"
    if hasattr(args, "settings"):   # the dest of --set
        message = _SETTING.sub(r"\1--set \2", message)
    return _KEYWORD.sub(flag, message)


def _command_word(argv: list[str]) -> str | None:
    # The top-level parser has only flags without values, so the first other word is the command.
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv=None) -> int:
    """Run `netlang` with `argv` (default: the process's arguments); returns the exit status.

    Without `argv` this is the process's entry point, and the process ends when it returns:
    a SIGINT or SIGTERM from then on is ignored, so that the command's status stands."""
    if argv is not None:
        return run_command([str(word) for word in argv])
    try:
        return run_command(sys.argv[1:])
    finally:
        # The command is done and the process ends next.  A signal during Python's shutdown
        # would stop it with KeyboardInterrupt, or, once the shutdown has put back the default
        # actions, kill it: status -2, without a word, after the work was complete (a
        # training run whose last line was printed).  Ignored signals stay ignored to the end.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def run_command(argv: list[str]) -> int:
    """Run the `netlang` command line `argv`; returns the exit status."""
    command = _command_word(argv)
    if command is not None and command not in COMMANDS:
        print(f"netlang: error: unknown command `{command}`{did_you_mean(command, COMMANDS)} "
              f"(commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except NetlangError as error:
        text = error.render()
        if error.loc is None:  # not a source diagnostic: the API's words, put in flags
            text = in_flag_words(text, args)
        print(text, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netlang: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as error:  # e.g. a run directory that cannot be written
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
