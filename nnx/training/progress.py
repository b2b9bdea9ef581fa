"""Progress bars of the training loops (tqdm, imported only when bars are shown)."""

from __future__ import annotations

import sys
import time
from typing import Any

TRAIN_EXTRA = 'pip install "nnx-backprop[train]"'


def missing(package: str, what: str) -> ImportError:
    """The ImportError raised when an optional training dependency is absent."""
    return ImportError(
        f"{what} needs the optional package {package!r}, which is not installed. "
        f"Install the training extras with: {TRAIN_EXTRA}"
    )


def in_notebook() -> bool:
    """Whether the code runs inside a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except AttributeError:  # pragma: no cover - exotic IPython
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _NullBar:
    """Stands in for a tqdm bar when bars are off."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


#: Seconds an epoch runs before its batch bar is drawn. Short epochs show only the
#: epochs bar: drawing a bar costs more than an epoch of a small network (a notebook
#: sends every redraw to the browser).
BATCH_BAR_DELAY = 0.5


class _PendingBar(_NullBar):
    """The batch bar of an epoch not yet :data:`BATCH_BAR_DELAY` seconds long: counts
    batches, and draws the real bar once the epoch has lasted that long."""

    def __init__(self, progress: Progress, desc: str, total: int) -> None:
        self.progress, self.desc, self.total = progress, desc, total
        self.n = 0
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.start >= BATCH_BAR_DELAY:
            self.progress.show_batch_bar(self.desc, self.total, self.n)


class Progress:
    """Nested progress bars (epochs, then the batches of the current epoch).

    ``enabled``: ``True`` forces bars (ImportError naming the extra if tqdm is
    missing), ``False`` silences them, ``None`` shows them only where they render well:
    a Jupyter notebook or a terminal (``sys.stderr.isatty()``). Redirected output (a CI
    log, a file) gets no bars at all, so no log spam. ``"lines"``: no bars, one line
    printed after each epoch (Keras's ``verbose=2``).
    """

    def __init__(self, enabled: bool | str | None, epochs: int, desc: str = "epochs") -> None:
        self.lines = enabled == "lines"
        self.epochs, self.epoch = epochs, 0
        self.tqdm: Any = None if self.lines else self.resolve(enabled)
        self.epochs_bar: Any = (
            self.tqdm(total=epochs, desc=desc, position=0, leave=True, dynamic_ncols=True)
            if self.tqdm
            else _NullBar()
        )
        self.batch_bar: Any = _NullBar()

    @staticmethod
    def resolve(enabled: bool | None) -> Any:
        """The tqdm class to draw bars with, or ``None`` for no bars (nothing drawn)."""
        if enabled is None:
            enabled = in_notebook() or _isatty(sys.stderr)
            required = False
        else:
            required = bool(enabled)
        if not enabled:
            return None
        try:
            if in_notebook():
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
        except ImportError:
            if required:
                raise missing("tqdm", "progress bars") from None
            return None
        return tqdm

    @property
    def active(self) -> bool:
        return self.tqdm is not None

    def start_epoch(self, epoch: int, batches: int) -> None:
        self.epoch = epoch
        if not self.tqdm:
            return
        desc = f"epoch {epoch}"
        if isinstance(self.batch_bar, _NullBar):  # no bar drawn yet (a _PendingBar too)
            self.batch_bar = _PendingBar(self, desc, batches)
        else:  # the bar of an earlier, long epoch: reused, not drawn anew
            self.batch_bar.set_description(desc, refresh=False)
            self.batch_bar.reset(total=batches)

    def show_batch_bar(self, desc: str, total: int, done: int) -> None:
        """Draw the batch bar (the epoch has run for :data:`BATCH_BAR_DELAY` seconds)."""
        self.batch_bar = self.tqdm(
            total=total, initial=done, desc=desc, position=1, leave=False, dynamic_ncols=True
        )

    def end_epoch(self, **postfix: float) -> None:
        if self.lines:
            shown = "".join(f" - {k}: {v:.4g}" for k, v in postfix.items())
            print(f"Epoch {self.epoch}/{self.epochs}{shown}", flush=True)
        self.epochs_bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.epochs_bar.update(1)

    def close(self) -> None:
        self.batch_bar.close()
        self.epochs_bar.close()


def bars_setting(owner: str, progress: bool | None, verbose: Any) -> bool | str | None:
    """:class:`Progress`'s ``enabled`` from nnx's ``progress`` and Keras's ``verbose``
    (``"auto"``/``None``: as ``progress``; 0: silent; 1: bars; 2: a line per epoch)."""
    if verbose is None or (isinstance(verbose, str) and verbose == "auto"):
        return progress
    if progress is not None:
        raise TypeError(f"{owner}: pass progress or verbose, not both")
    if isinstance(verbose, (bool, int)) and verbose in (0, 1, 2):
        return "lines" if verbose == 2 else bool(verbose)
    raise ValueError(f"{owner}: verbose must be 'auto', 0, 1 or 2 (or a bool), got {verbose!r}")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
