r"""Checkpoints of the training loops, and SIGTERM handled like Ctrl-C.

``Optim.SGD(..., checkpoint=PATH)`` and ``Optim.SGD_eval(..., checkpoint=PATH)`` follow
Keras' ``BackupAndRestore``: after every finished epoch they write ``PATH``
atomically (:func:`nnx.atomic.atomic_open`); a run that starts with ``PATH``
present resumes from it; a run that ends normally (all epochs, or early stopping)
removes it. A run killed with ``kill -9`` at any moment and started again with the
same call therefore ends with the same parameters and history as an uninterrupted
run: bit for bit on NumPy (same operations in the same order), to rounding on the
other backends. Exactness needs an integer ``seed`` (with ``seed=None`` the
validation split of a restarted ``SGD_eval`` is drawn afresh).

A checkpoint is an nnx model file (:func:`nnx.load` reads its network) whose header
metadata holds, under ``"checkpoint"``: the loop (``"SGD"`` or ``"SGD_eval"``) and the
arguments that must not change across a resume (sample count, batch size, seed,
shuffling, optimiser and its hyper-parameters), the number of finished epochs, the
state of the loop's random generator and of nnx's (:func:`nnx.manual_seed`), the
history, and the early-stopping state; its ``extra/`` arrays hold the optimiser's
per-parameter state (``opt/<parameter>/<name>``) and the best epoch's parameters
(``best/<parameter>``). Resuming with different arguments, another optimiser or
another architecture raises ``ValueError`` naming the difference.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends, serialization
from ..module import Module

__all__ = ["Checkpoint", "call_signature", "rng_state", "set_rng_state"]

_OPT = "opt/"
_BEST = "best/"


def rng_state(rng: Any) -> Any:
    """JSON-serialisable state of a NumPy ``Generator`` or ``RandomState`` (or None)."""
    if isinstance(rng, np.random.Generator):
        return {"kind": "generator", "state": rng.bit_generator.state}
    if isinstance(rng, np.random.RandomState) or rng is np.random:
        state = rng.get_state(legacy=False)
        state["state"] = {k: np.asarray(v).tolist() for k, v in state["state"].items()}
        return {"kind": "random_state", "state": state}
    return None


def set_rng_state(rng: Any, saved: Any) -> None:
    """Put back a state :func:`rng_state` returned (``None``: nothing to do)."""
    if saved is None:
        return
    if saved["kind"] == "generator" and isinstance(rng, np.random.Generator):
        rng.bit_generator.state = saved["state"]
    elif saved["kind"] == "random_state" and hasattr(rng, "set_state"):
        state = dict(saved["state"])
        state["state"] = {
            k: np.asarray(v, dtype=np.uint32) if k == "key" else v
            for k, v in state["state"].items()
        }
        rng.set_state(state)


def _optimizer_arrays(optimizer: Any) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
    if optimizer is None or not callable(getattr(optimizer, "state_dict", None)):
        return None, {}
    sd = optimizer.state_dict()
    arrays = {
        f"{_OPT}{param}/{name}": np.asarray(value)
        for param, st in sd["state"].items()
        for name, value in st.items()
    }
    meta = {k: sd[k] for k in ("class", "config", "steps")}
    return meta, arrays


class Checkpoint:
    """The checkpoint file of one training loop (see the module documentation)."""

    def __init__(
        self, path: str | os.PathLike[str], owner: str, call: dict[str, Any], network: Module
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{owner}: checkpoint must be a path, got {type(path).__name__}")
        serialization.check_savable(network, owner)  # before an epoch is trained, not after
        self.path = Path(path)
        self.owner = owner
        self.call = call

    def follow(
        self,
        network: Module,
        optimizer: Any,
        rng: np.random.Generator,
        history: dict[str, list[Any]],
        early: Any = None,
    ) -> None:
        """What :meth:`on_epoch_end` saves: the loop's network, optimiser, generator,
        history and early stopping (:class:`~nnx.training.callbacks.EarlyStopping`)."""
        self.following = (network, optimizer, rng, history, early)

    def on_epoch_end(self, epoch: int, record: Any, state: Any) -> None:
        """Observer of the epoch loop: :meth:`save` the state after ``epoch`` (with the
        early-stopping state after that epoch's verdict: observe after it)."""
        network, optimizer, rng, history, early = self.following
        if early is None:
            self.save(network, optimizer, epoch, rng, history)
            return
        self.save(
            network,
            optimizer,
            epoch,
            rng,
            history,
            {"best_value": early.best_value, "wait": early.wait, "best_epoch": early.best_epoch},
            early.best_state,
        )

    def exists(self) -> bool:
        return self.path.exists()

    def save(
        self,
        network: Module,
        optimizer: Any,
        epoch: int,
        rng: np.random.Generator,
        history: dict[str, list[Any]],
        early: dict[str, Any] | None = None,
        best_state: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write the state after ``epoch`` finished epochs, atomically."""
        opt_meta, extra = _optimizer_arrays(optimizer)
        if best_state is not None:
            extra.update({_BEST + k: np.asarray(v) for k, v in best_state.items()})
        meta = {
            "checkpoint": {
                "call": self.call,
                "epoch": epoch,
                "rng": rng_state(rng),
                "nnx_rng": rng_state(backends.get_rng()),
                "history": history,
                "early": early,
                "has_best": best_state is not None,
                "optimizer": opt_meta,
            }
        }
        serialization.save_archive(network, self.path, meta, extra, owner=self.owner)

    def restore(self, network: Module, optimizer: Any, rng: np.random.Generator) -> dict[str, Any]:
        """Load the checkpoint into ``network``, ``optimizer`` and ``rng``.

        Returns ``{"epoch", "history", "early", "best_state"}``. Raises ``ValueError``
        when the checkpoint belongs to another call, optimiser or architecture.
        """
        try:
            saved, header, extra = serialization.load_archive(self.path)
        except serialization.ModelFileError as exc:
            raise serialization.ModelFileError(
                f"{self.owner}: cannot resume from checkpoint {str(self.path)!r}: {exc}"
            ) from None
        info = header.get("metadata", {}).get("checkpoint")
        if not isinstance(info, dict):
            raise ValueError(
                f"{self.owner}: {str(self.path)!r} is a model file, not a training "
                f"checkpoint; pass another checkpoint path"
            )
        differ = {
            k: (info["call"].get(k), v) for k, v in self.call.items() if info["call"].get(k) != v
        }
        if differ:
            diffs = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"{self.owner}: checkpoint {str(self.path)!r} was written by another call "
                f"({diffs}); resume with the same arguments, or delete the file to start over"
            )
        if repr(saved) != repr(network):
            raise ValueError(
                f"{self.owner}: checkpoint {str(self.path)!r} holds another architecture:\n"
                f"{saved!r}\nnot\n{network!r}"
            )
        network.load_state_dict(saved.state_dict())
        opt_meta = info.get("optimizer")
        if opt_meta is not None and optimizer is not None:
            state: dict[str, dict[str, np.ndarray]] = {}
            for key, value in extra.items():
                if key.startswith(_OPT):
                    param, _, name = key[len(_OPT) :].rpartition("/")
                    state.setdefault(param, {})[name] = value
            optimizer.load_state_dict({**opt_meta, "state": state})
        set_rng_state(rng, info.get("rng"))
        set_rng_state(backends.get_rng(), info.get("nnx_rng"))
        best = {k[len(_BEST) :]: v for k, v in extra.items() if k.startswith(_BEST)}
        return {
            "epoch": int(info["epoch"]),
            "history": {k: list(v) for k, v in info["history"].items()},
            "early": info.get("early"),
            "best_state": best if info.get("has_best") else None,
        }

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def call_signature(optim: Any, **arguments: Any) -> dict[str, Any]:
    """What must not change between a run and its resume (JSON values)."""
    opt = optim.optimizer
    return {
        **arguments,
        "eps": None if opt is not None else optim.eps,
        "optimizer": None if opt is None else repr(opt),
        "loss": repr(optim.loss),
    }
