"""Training histories: DataFrame, CSV, learning-curve plots (live or to a PNG).

Each optional dependency (matplotlib, pandas, IPython) is imported inside the function
that needs it, so ``import nnx`` needs NumPy and array-api-compat only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open
from . import progress
from .progress import missing

__all__ = [
    "HISTORY_COLUMNS",
    "VALIDATION_NAMES",
    "LivePlot",
    "history_frame",
    "plot_history",
    "write_csv",
]

#: Columns of a training history, in order: the names of the original library
#: (NeuralNetworksDIY), kept by :meth:`~nnx.Optim.SGD_eval` and its DataFrame. There the
#: ``*_test`` columns are measured on the held-out *validation split* of the training
#: data, not on a data set's test set.
HISTORY_COLUMNS = ("epoch", "loss_train", "loss_test", "score_train", "score_test")

#: The same columns under the names the command line, the progress bars and
#: ``nnx train``'s ``history.csv`` use (``acc``: accuracy).
VALIDATION_NAMES = {
    "epoch": "epoch",
    "loss_train": "loss",
    "loss_test": "val_loss",
    "score_train": "acc",
    "score_test": "val_acc",
}


def history_frame(history: Mapping[str, Sequence[float]]) -> Any:
    """The history as a pandas DataFrame with :data:`HISTORY_COLUMNS`."""
    try:
        import pandas as pd
    except ImportError:
        raise missing("pandas", "return_dataframe=True") from None
    return pd.DataFrame({c: np.asarray(history[c]) for c in HISTORY_COLUMNS})


def write_csv(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    names: Mapping[str, str] | None = None,
) -> Path:
    """Write the history to a CSV file (standard library only); returns the path.

    ``names`` renames the header's columns, e.g. :data:`VALIDATION_NAMES` (``nnx train``
    does) for ``epoch,loss,val_loss,acc,val_acc``.
    """
    import csv

    path = Path(path)
    cols = [c for c in HISTORY_COLUMNS if c in history]
    rows = zip(*(history[c] for c in cols), strict=True)
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([(names or {}).get(c, c) for c in cols])
        for row in rows:
            w.writerow(
                [int(v) if c == "epoch" else repr(float(v)) for c, v in zip(cols, row, strict=True)]
            )
    return path


def _figure(
    history: Mapping[str, Sequence[float]],
    title: str | None = None,
    labels: tuple[str, str] = ("train", "validation"),
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
    labels: tuple[str, str] = ("train", "validation"),
) -> Any:
    """Learning curves (loss and accuracy, training and validation) of a training history.

    ``history`` is a mapping or DataFrame with :data:`HISTORY_COLUMNS`. With ``path``,
    the figure is written there as a PNG (atomically: a viewer never sees half a file).
    ``labels`` name the two splits in the legends (the ``*_test`` columns of
    :meth:`~nnx.Optim.SGD_eval` are its validation split).
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
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    return fig


class LivePlot:
    """Learning curves refreshed after every epoch.

    In a Jupyter notebook the figure is redrawn in the cell output; anywhere else it is
    rewritten as a PNG file (``target`` if it is a path, ``"learning_curve.png"`` in
    the working directory if it is ``True``).
    """

    def __init__(self, target: bool | str | os.PathLike[str]) -> None:
        self.notebook = target is True and progress.in_notebook()
        self.path = (
            None if self.notebook else Path("learning_curve.png" if target is True else target)
        )
        self._handle: Any = None
        #: the history :meth:`on_epoch_end` draws (the loop's, set before it starts)
        self.history: Mapping[str, Sequence[float]] = {}
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise missing("matplotlib", "online_plot") from None

    def on_epoch_end(self, epoch: int, record: Any, state: Any) -> None:
        """Observer of the epoch loop: redraw :attr:`history`."""
        self.update(self.history)

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
