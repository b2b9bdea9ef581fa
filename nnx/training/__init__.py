"""Training: :class:`Optim` and its parts, one job per module.

================================  ====================================================
:mod:`nnx.training.optim`         :class:`Optim`, the facade (the original library's API)
:mod:`nnx.training.data`          data placement: host data to the network's backend
:mod:`nnx.training.step`          one step (forward, loss, one read, backward, update)
:mod:`nnx.training.loop`          the epoch loop: history, observers, Ctrl-C rollback
:mod:`nnx.training.callbacks`     :class:`EarlyStopping`
:mod:`nnx.training.progress`      progress bars
:mod:`nnx.training.history`       history as DataFrame / CSV / learning-curve plots
================================  ====================================================

Optional dependencies (tqdm, matplotlib, pandas, IPython) are imported only where used.
"""

from __future__ import annotations

from .callbacks import EarlyStopping
from .history import (
    HISTORY_COLUMNS,
    VALIDATION_NAMES,
    LivePlot,
    history_frame,
    plot_history,
    write_csv,
)
from .optim import Optim
from .progress import TRAIN_EXTRA, Progress, in_notebook, missing

__all__ = [
    "HISTORY_COLUMNS",
    "TRAIN_EXTRA",
    "VALIDATION_NAMES",
    "EarlyStopping",
    "LivePlot",
    "Optim",
    "Progress",
    "history_frame",
    "in_notebook",
    "missing",
    "plot_history",
    "write_csv",
]
