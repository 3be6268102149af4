"""Training progress: a bar per epoch on a terminal, one plain line per epoch otherwise.

Before the first step, the programs that must be compiled are named on one line, and each
one's compile time follows as it finishes (`compiling`, `compiled`); the epochs' samples/s
and ETA never include that time.

On a terminal (stderr is a TTY) each epoch shows a tqdm bar with the running
loss and accuracy, samples/s and the ETA, and leaves one summary line when it
ends.  Piped or redirected output gets only the summary lines, so logs and CI
output stay readable.  `Progress(enabled=False)` prints nothing.
"""

from __future__ import annotations

import sys
import time

# Keys of an epoch record shown on the summary line, in this order, with their labels.
_SHOWN = (("loss", "loss"), ("bpc", "bpc"), ("accuracy", "acc"), ("val_loss", "val_loss"),
          ("val_bpc", "val_bpc"), ("val_accuracy", "val_acc"), ("test_loss", "test_loss"),
          ("test_bpc", "test_bpc"), ("test_accuracy", "test_acc"))


def format_record(record: dict, epochs: int) -> str:
    """`epoch 3/20  loss 0.1234  acc 0.9650  val_loss ...  lr 0.05  12,345 samples/s  4.2s`."""
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}"]
    shown = _SHOWN
    if "phases" in record:   # a run of several phases: each phase's own loss, not one
        if "phase" in record:
            parts.append(f"{record['phase']}:")
        parts += [f"loss[{name}] {figures['loss']:.4f}" for name, figures in
                  record["phases"].items() if figures.get("loss") is not None]
        shown = [(key, label) for key, label in _SHOWN if key not in ("loss", "bpc")]
    for key, label in shown:
        if key in record:
            parts.append(f"{label} {record[key]:.4f}")
    for key in sorted(record):
        if key.startswith(("top_", "val_top_", "test_top_")):
            parts.append(f"{key} {record[key]:.4f}")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.4g}")
    if "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    if "time_s" in record:
        parts.append(f"{record['time_s']:.1f}s")
    if record.get("best"):
        parts.append("*")
    return "  ".join(parts)


class Progress:
    """Reports a training run. `tty=None` detects a terminal on `stream` (default stderr);
    summary lines go to `out` (default stdout).  Messages name the API's keywords
    (`epochs=N`); `wording` rewrites them for another caller (the command line's flags)."""

    def __init__(self, *, enabled: bool = True, tty: bool | None = None, stream=None, out=None,
                 log_every: int = 1, wording=None):
        self.enabled = enabled
        self.wording = wording
        self.stream = stream if stream is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.log_every = max(1, int(log_every))
        self._bar = None
        self._epoch = 0
        self._epochs = 0
        self._started = 0.0
        self._compiling = 0   # programs announced by `compiling` still to be reported

    # -- lines ------------------------------------------------------------------------------

    def message(self, text: str) -> None:
        """Print one line (between bars), in the caller's words."""
        if not self.enabled:
            return
        if self.wording is not None:
            text = self.wording(text)
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    # -- compilation ------------------------------------------------------------------------

    def compiling(self, titles: list) -> None:
        """`compiling 2 kernels (training step, evaluation)...`, before the first is compiled;
        `compiled` then reports each.  On a terminal the times complete this line as they
        come; otherwise each gets a line of its own."""
        self._compiling = len(titles)
        if not self.enabled:
            return
        noun = "kernel" if len(titles) == 1 else "kernels"
        header = f"compiling {len(titles)} {noun} ({', '.join(titles)})..."
        print(header, end="" if self.tty else "\n", file=self.out, flush=True)

    def compiled(self, title: str, seconds: float) -> None:
        """One program announced by `compiling` finished compiling, in `seconds`."""
        self._compiling -= 1
        if not self.enabled:
            return
        if self.tty:
            ending = "\n" if self._compiling <= 0 else ","
            print(f" {title} {seconds:.1f}s", end=ending, file=self.out, flush=True)
        else:
            print(f"  {title}: {seconds:.1f}s", file=self.out, flush=True)

    # -- epochs -----------------------------------------------------------------------------

    def epoch_start(self, epoch: int, epochs: int, examples: int, done: int = 0) -> None:
        """`epoch` counts from 1; `done` examples of it were trained before a resume."""
        self._epoch, self._epochs, self._started = epoch, epochs, time.perf_counter()
        if not (self.enabled and self.tty):
            return
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency, but a bare environment still trains
            return
        self._bar = tqdm(total=examples, initial=done, unit="ex", unit_scale=examples >= 10_000, leave=False,
                         file=self.stream, dynamic_ncols=True,
                         desc=f"epoch {epoch}/{epochs}")

    def step(self, examples: int, loss: float | None = None,
             accuracy: float | None = None, phases: dict | None = None) -> None:
        """Advance the bar by a batch of `examples`, showing its running loss and accuracy;
        with `phases` ({phase: running loss}), each phase's loss instead of one."""
        if self._bar is None:
            return
        postfix = {}
        if phases:
            postfix.update({f"loss[{name}]": f"{value:.4f}" for name, value in phases.items()
                            if value is not None})
        elif loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        if accuracy is not None:
            postfix["acc"] = f"{accuracy:.4f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(examples)

    def epoch_end(self, record: dict, last: bool = False) -> None:
        """Close the epoch's bar and print its record (every `log_every` epochs, the first,
        the last and an early stop)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self.enabled:
            return
        epoch = record.get("epoch", self._epoch)
        if last or epoch % self.log_every == 0 or epoch == 1 or record.get("stopped_early"):
            print(format_record(record, self._epochs), file=self.out, flush=True)

    def close(self) -> None:
        """Close a bar left open (an interrupted run)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def auto_log_every(epochs: int) -> int:
    """Print every epoch for ordinary runs; about 50 lines for runs of thousands of tiny epochs."""
    return 1 if epochs <= 100 else max(1, epochs // 50)
