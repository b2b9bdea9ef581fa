"""Training: :class:`Optim` and its parts, one job per module.

================================  ====================================================
:mod:`nnx.training.optim`         :class:`Optim`, the facade (the original library's
                                  API): checks arguments, builds the parts below
:mod:`nnx.training.data`          data placement (once per loop) and the batch iterator
:mod:`nnx.training.loop`          the epoch loop: history, observers, Ctrl-C rollback
:mod:`nnx.training.step`          the updater: forward, loss, one read, backward, update
:mod:`nnx.training.graph`         the updater replayed as CUDA graphs
:mod:`nnx.training.guard`         non-finite parameters traced to their step
:mod:`nnx.training.callbacks`     :class:`EarlyStopping`, a user's per-epoch callback
:mod:`nnx.training.checkpoint`    checkpoints written after every epoch, and resume
:mod:`nnx.training.signals`       SIGTERM handled like Ctrl-C
:mod:`nnx.training.progress`      progress bars
:mod:`nnx.training.history`       history as DataFrame / CSV / learning-curve plots
================================  ====================================================

A batch's path is one way down: :meth:`Optim.SGD_eval` places the data and builds a
:class:`~nnx.training.data.Batches` iterator and a :class:`~nnx.training.step.Step`,
hands both to a :class:`~nnx.training.loop.Trainer`, which pulls each batch from the
iterator and gives it to the step, which runs the network.

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
