"""What the commands print besides the progress bar: phase lines, where the outputs are, no known noise.

- :class:`Phases` prints a numbered start line and a done line with the elapsed seconds for each phase of a
  long command (``[demo 1/4] training the tiny teacher (1000 iterations) ...``).
- :func:`format_outputs` and :func:`run_outputs` say where a command wrote its files.
- :func:`quiet_known_noise` silences, by their exact text, the messages of a run that need no action: the
  fit-start warning about the frozen teacher's modules being in eval mode (only for the teacher's exact
  module count, so any other module left in eval mode is still reported), Lightning's advertisements for
  its cloud packages, its note that a configured model summary (``callbacks=rich``) replaces its own, a
  deprecation inside Lightning that newer torch releases report, the warning that an epoch is shorter than
  ``log_every_n_steps`` (logging counts iterations across epochs here), and, in a resumed run, the warning
  that its checkpoint directory is not empty; Lightning's ``weights_only`` note at every checkpoint save;
  and (:func:`drop_exact_log`) the ONNX exporter's "torchvision is not installed" lines and alembic's
  "setup plugin" lines at the start of an Optuna sweep.
- :func:`one_line_errors` turns a user error of a command (a setting, a file, a full disk) into one line on
  stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# not re-exported by Lightning's packages, but the objects its warnings go through
from lightning.pytorch.utilities.rank_zero import rank_zero_module  # pyright: ignore[reportPrivateImportUsage]
from lightning.pytorch.utilities.warnings import PossibleUserWarning  # pyright: ignore[reportPrivateImportUsage]
from torch import nn

# Lightning's INFO banners advertising its cloud packages (litlogger, litmodels), printed by every Trainer
LIGHTNING_TIPS = (
    r"💡 Tip: For seamless cloud (logging and experiment tracking|uploads and versioning), "
    r"try installing \[lit(logger|models)\]"
)
# ... and its INFO note that the summary a callbacks preset configures (callbacks=rich) replaces its own
SUMMARY_CONFIGURED = (
    r"Trainer already configured with model summary callbacks: \[.*\]\. "
    r"Skipping setting a default `ModelSummary` callback\.$"
)
LIGHTNING_BANNERS = re.compile(f"{LIGHTNING_TIPS}|{SUMMARY_CONFIGURED}")
# lightning/pytorch/utilities/_pytree.py builds a LeafSpec, which torch 2.13 reports as deprecated
PYTREE_LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# Lightning warns when an epoch has fewer batches than log_every_n_steps, but it logs every n iterations
# counted across epochs (the epoch loop's _batches_that_stepped): short fixed-size epochs lose no log rows
SHORT_EPOCH_LOGGING = (
    r"The number of training batches \(\d+\) is smaller than the logging interval "
    r"Trainer\(log_every_n_steps=\d+\)"
)


def eval_mode_warning(n_modules: int) -> str:
    """The regex of Lightning's fit-start warning when exactly ``n_modules`` modules are in eval mode."""
    return rf"Found {n_modules} module\(s\) in eval mode at the start of training\."


# Lightning's INFO note at every checkpoint save (it breaks the progress bar), and the ONNX exporter's warning
# for each torchvision op it registers when torchvision is absent (this library uses none): exact texts
WEIGHTS_ONLY_NOTE = (
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
    "`weights_only` was not set, defaulting to `False`.",
)
# alembic (under Optuna's storage) logs one INFO line per plugin when an Optuna sweep starts
ALEMBIC_NOTE = ("alembic.runtime.plugins", "setup plugin %s")
TORCHVISION_NOTE = (
    "torch.onnx._internal.exporter._registration",
    "torchvision is not installed. Skipping %s",
)


class _DropLightningBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not LIGHTNING_BANNERS.match(record.getMessage())


class _DropExact(logging.Filter):
    """Drop the records whose message template is exactly ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.text


def drop_exact_log(logger_name: str, text: str) -> None:
    """Silence the records of logger ``logger_name`` whose message template is exactly ``text`` (once)."""
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropExact) and f.text == text for f in log.filters):
        log.addFilter(_DropExact(text))


def quiet_known_noise(
    teacher: nn.Module | None = None, resumed_checkpoint_dirs: Iterable[str | os.PathLike] = ()
) -> None:
    """Silence the messages of a run that need no action (see the module doc); call before the Trainer.

    Args:
        teacher: the frozen teacher, kept in eval mode on purpose: the eval-mode warning is silenced for
            exactly its number of modules (itself and its submodules).
        resumed_checkpoint_dirs: the checkpoint directories of a resumed run, which hold its checkpoints.
    """
    log = rank_zero_module.log  # the logger of Lightning's rank_zero_info
    if not any(isinstance(f, _DropLightningBanners) for f in log.filters):
        log.addFilter(_DropLightningBanners())
    drop_exact_log(*WEIGHTS_ONLY_NOTE)
    warnings.filterwarnings("ignore", message=PYTREE_LEAFSPEC, category=FutureWarning)
    warnings.filterwarnings("ignore", message=SHORT_EPOCH_LOGGING, category=PossibleUserWarning)
    if teacher is not None:
        n_modules = len(list(teacher.modules()))
        warnings.filterwarnings("ignore", message=eval_mode_warning(n_modules), category=PossibleUserWarning)
    for directory in resumed_checkpoint_dirs:  # ModelCheckpoint names its directory by its real path
        text = rf"Checkpoint directory {re.escape(os.path.realpath(directory))} exists and is not empty\.$"
        warnings.filterwarnings("ignore", message=text, category=UserWarning)


def format_outputs(entries: Iterable[tuple[str, str | Path | None]], title: str = "outputs:") -> str:
    """``title`` and one aligned ``name  path`` line per entry; entries without a path are left out."""
    rows = [(name, str(path)) for name, path in entries if path]
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join([title, *(f"  {name:<{width}}  {path}" for name, path in rows)])


def run_outputs(result: Mapping[str, Any], loggers: Sequence[Any] = ()) -> str:
    """Where a training run wrote its files: run dir, exported network, checkpoints, logs, ``eval.json``.

    Args:
        result: what ``train`` returns (``output_dir``, ``export``, ``checkpoint``).
        loggers: the trainer's loggers; each is listed with its directory.
    """
    out = Path(result["output_dir"])
    export, ckpt = result.get("export"), result.get("checkpoint")
    entries: list[tuple[str, str | Path | None]] = [("run dir", out)]
    if export:
        entries.append((Path(export).stem, export))
    if ckpt:
        entries.append(("checkpoints", f"{Path(ckpt).parent} (evaluated: {Path(ckpt).name})"))
    for lg in loggers:
        name = type(lg).__name__.removesuffix("Logger").lower() or "logger"
        entries.append((f"{name} logs", getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)))
    entries.append(("eval", out / "eval.json" if (out / "eval.json").is_file() else None))
    return format_outputs(entries)


class Phases:
    """Numbered start and done lines for the phases of a long command.

    Args:
        command: the prefix of every line, e.g. ``demo``.
        total: how many phases the command has.
        stream: where the lines go (default: ``sys.stdout`` at the time of printing).
        clock: seconds, for the elapsed time (``time.perf_counter``).
    """

    def __init__(
        self,
        command: str,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.command, self.total, self.stream, self.clock = command, total, stream, clock
        self.index, self._start = 0, 0.0

    def _print(self, text: str) -> None:
        print(
            f"[{self.command} {self.index}/{self.total}] {text}", file=self.stream or sys.stdout, flush=True
        )

    def start(self, what: str) -> None:
        """Begin the next phase: ``[demo i/n] <what> ...``."""
        self.index += 1
        self._start = self.clock()
        self._print(f"{what} ...")

    def done(self, output: str | Path | None = None) -> float:
        """End the current phase: ``[demo i/n] done in <s> s[: <output>]``; return the elapsed seconds."""
        elapsed = self.clock() - self._start
        self._print(f"done in {elapsed:.0f} s" + (f": {output}" if output else ""))
        return elapsed

    def skip(self, what: str) -> None:
        """A phase with nothing to do (e.g. a cached result): one line, ``[demo i/n] <what>``."""
        self.index += 1
        self._print(what)


# What a user fixes (a setting, a file, a folder, the disk), as opposed to a bug: ValueError includes the runs
# refused before they start (RunRefused); OSError a missing, unreadable or unwritable file, or a full disk.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another folder",
    errno.EACCES: "fix its permissions or choose another folder",
    errno.EPERM: "fix its permissions or choose another folder",
    errno.EROFS: "the filesystem is read-only: choose another folder",
}


def error_line(err: BaseException) -> str:
    """One line for a user error: the message, or for an ``OSError`` what failed, the path and what to do."""
    if isinstance(err, OSError) and err.strerror:
        paths = " -> ".join(os.fspath(p) for p in (err.filename, err.filename2) if p is not None)
        text = f"{err.strerror}: {paths}" if paths else err.strerror
        hint = _OS_HINTS.get(err.errno or 0)
        text = f"{text} ({hint})" if hint else text
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def missing_value_error(err: Exception) -> ValueError:
    """OmegaConf's multi-line ``MissingMandatoryValue`` as one ``ValueError`` naming the option to pass."""
    key = getattr(err, "full_key", None) or "a mandatory option"
    return ValueError(f"{key}= is required (it is ??? in the config): pass {key}=<value>")


@contextmanager
def one_line_errors(command: str) -> Iterator[None]:
    """Print a user error of ``command`` as ``<command>: error: <one line>`` and exit with status 2.

    With ``HYDRA_FULL_ERROR=1`` the error propagates with its traceback (what Hydra users set to debug).
    """
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except (*USER_ERRORS, MissingMandatoryValue) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(err, MissingMandatoryValue):
            err = missing_value_error(err)
        print(f"{command}: error: {error_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
