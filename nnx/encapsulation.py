"""The original library's ``encapsulation`` module: :class:`~nnx.Sequential` (defined in
:mod:`nnx.sequential`, below the training code that runs it) and :class:`~nnx.Optim`
(:mod:`nnx.training`)."""

from __future__ import annotations

from .sequential import Sequential
from .training import Optim

__all__ = ["Optim", "Sequential"]
