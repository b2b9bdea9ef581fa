"""SIGTERM handled like Ctrl-C by the training loops (and ``nnx train``).

Inside the loops (on the main thread) SIGTERM -- what ``docker stop``,
Kubernetes and SLURM send before ``SIGKILL`` -- raises :class:`Terminated`, a
``KeyboardInterrupt``: the loop stops as on Ctrl-C (finished epochs kept, the
parameters of the last finished epoch restored, :attr:`nnx.Optim.interrupted` set,
and :attr:`nnx.Optim.terminated` too). ``nnx train`` then writes its model and
history and exits with status 143 (128 + SIGTERM), as ``kill`` expects. A handler the
program installed itself is left alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM received during a training loop (handled like Ctrl-C)."""

    signum = getattr(signal, "SIGTERM", 15)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"received signal {signum} (SIGTERM)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``).

    Only on the main thread (where Python delivers signals), and only when SIGTERM
    still has its default action: a handler the program installed is kept.
    """
    sigterm = getattr(signal, "SIGTERM", None)
    if sigterm is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(sigterm)
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(sigterm, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(sigterm, previous)
