"""Helpers of the training loops: progress bars, learning-curve plots, history tables.

Everything here imports its optional dependency (tqdm, matplotlib, pandas, IPython)
lazily, inside the function that needs it, so ``import nnx`` needs NumPy and
array-api-compat only. These helpers are used by :class:`nnx.Optim` and the command
line; :func:`plot_history` and :func:`history_frame` are public.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HISTORY_COLUMNS", "history_frame", "in_notebook", "plot_history", "write_csv"]

#: Columns of a training history, in order.
HISTORY_COLUMNS = ("epoch", "loss_train", "loss_test", "score_train", "score_test")

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


class Progress:
    """Nested progress bars (epochs, then the batches of the current epoch).

    ``enabled``: ``True`` forces bars (ImportError naming the extra if tqdm is
    missing), ``False`` silences them, ``None`` shows them only where they render well:
    a Jupyter notebook or a terminal (``sys.stderr.isatty()``). Redirected output (a CI
    log, a file) gets no bars at all, so no log spam.
    """

    def __init__(self, enabled: bool | None, epochs: int, desc: str = "epochs") -> None:
        self.tqdm: Any = self.resolve(enabled)
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
        self.batch_bar.close()
        if self.tqdm:
            self.batch_bar = self.tqdm(
                total=batches, desc=f"epoch {epoch}", position=1, leave=False, dynamic_ncols=True
            )

    def end_epoch(self, **postfix: float) -> None:
        self.batch_bar.close()
        self.batch_bar = _NullBar()
        self.epochs_bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.epochs_bar.update(1)

    def close(self) -> None:
        self.batch_bar.close()
        self.epochs_bar.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def history_frame(history: Mapping[str, Sequence[float]]) -> Any:
    """The history as a pandas DataFrame with :data:`HISTORY_COLUMNS`."""
    try:
        import pandas as pd
    except ImportError:
        raise missing("pandas", "return_dataframe=True") from None
    return pd.DataFrame({c: np.asarray(history[c]) for c in HISTORY_COLUMNS})


def write_csv(history: Mapping[str, Sequence[float]], path: str | os.PathLike[str]) -> Path:
    """Write the history to a CSV file (standard library only); returns the path."""
    import csv

    path = Path(path)
    cols = [c for c in HISTORY_COLUMNS if c in history]
    rows = zip(*(history[c] for c in cols), strict=True)
    with _atomic(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in rows:
            w.writerow(
                [int(v) if c == "epoch" else repr(float(v)) for c, v in zip(cols, row, strict=True)]
            )
    return path


@contextlib.contextmanager
def _atomic(path: Path, mode: str, **kwargs: Any) -> Any:
    """Open a temporary file next to ``path``; move it over ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _figure(
    history: Mapping[str, Sequence[float]],
    title: str | None = None,
    labels: tuple[str, str] = ("train", "test"),
) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise missing("matplotlib", "plotting a learning curve") from None
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_score = fig.subplots(1, 2)
    epochs = np.asarray(history["epoch"])
    for ax, key, label in (
        (ax_loss, "loss", "loss (mean per sample)"),
        (ax_score, "score", "accuracy"),
    ):
        for split, style, name in (("train", "-", labels[0]), ("test", "--", labels[1])):
            values = np.asarray(history.get(f"{key}_{split}", []), dtype=float)
            if values.size and np.isfinite(values).any():
                ax.plot(epochs[: values.size], values, style, marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_history(
    history: Any,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    labels: tuple[str, str] = ("train", "test"),
) -> Any:
    """Learning curves (loss and accuracy, train and test) of a training history.

    ``history`` is a mapping or DataFrame with :data:`HISTORY_COLUMNS`. With ``path``,
    the figure is written there as a PNG (atomically: a viewer never sees half a file).
    ``labels`` name the two splits in the legends.
    Returns the matplotlib ``Figure`` (no pyplot state is touched).

    >>> import nnx, tempfile, os
    >>> h = {"epoch": [1, 2], "loss_train": [1.0, 0.5], "loss_test": [1.1, 0.7],
    ...      "score_train": [0.5, 0.8], "score_test": [0.4, 0.7]}
    >>> fig = nnx.training.plot_history(h, os.path.join(tempfile.mkdtemp(), "c.png"))
    """
    if hasattr(history, "to_dict") and hasattr(history, "columns"):
        history = {c: history[c].to_numpy() for c in history.columns}
    fig = _figure(history, title, labels)
    if path is not None:
        path = Path(path)
        with _atomic(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    return fig


class LivePlot:
    """Learning curves refreshed after every epoch.

    In a Jupyter notebook the figure is redrawn in the cell output; anywhere else it is
    rewritten as a PNG file (``target`` if it is a path, ``"learning_curve.png"`` in
    the working directory if it is ``True``).
    """

    def __init__(self, target: bool | str | os.PathLike[str]) -> None:
        self.notebook = target is True and in_notebook()
        self.path = (
            None if self.notebook else Path("learning_curve.png" if target is True else target)
        )
        self._handle: Any = None
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise missing("matplotlib", "online_plot") from None

    def update(self, history: Mapping[str, Sequence[float]]) -> None:
        if self.notebook:
            import io

            from IPython.display import Image, display

            # a PNG, not the Figure: a Figure renders as an image only once pyplot's
            # inline backend has registered its formatter
            buf = io.BytesIO()
            _figure(history).savefig(buf, format="png", dpi=100)
            image = Image(data=buf.getvalue(), format="png")
            if self._handle is None:
                self._handle = display(image, display_id=True)
            else:
                self._handle.update(image)  # the same output, redrawn in place
        else:
            plot_history(history, self.path)
