"""Command line: ``nnx train`` / ``python -m nnx train`` and ``nnx evaluate``.

``nnx train`` trains one of :mod:`nnx.models` on one of :mod:`nnx.datasets` with
:meth:`nnx.Optim.SGD_eval` (a validation split of the training set drives early
stopping; the best epoch is kept), then reports the accuracy on the data set's
held-out test set, and writes to the output folder:

- ``history.csv``: epoch, loss_train, loss_test, score_train, score_test (the
  ``*_test`` columns are the validation split);
- ``learning_curve.png``: loss and accuracy curves;
- ``model.npz``: the trained network (:func:`nnx.save`), loadable with :func:`nnx.load`;
- ``metrics.json``: the run's settings, test accuracy, times;
- ``args.json``: the run's arguments, and, while the run is going,
  ``checkpoint.npz`` (:mod:`nnx.training.checkpoint`), written after every epoch:
  ``nnx train --resume --out FOLDER`` continues a run killed in any way (even
  ``kill -9``) with its arguments and ends as the uninterrupted run would have.

The output folder is checked (writable, free space) before training starts.
Ctrl-C or SIGTERM stops at the last finished epoch and still writes every output
(exit status 130 and 143, i.e. 128 + the signal); a numerical blow-up writes the
history and the model of the last good step, then exits with status 1; bad
arguments exit with status 2.

Example (the README's main job, about a minute on a 2-core CPU)::

    nnx train                      # MNIST-1D, deeper CNN, Adam, NumPy backend
    nnx train --model mlp
    nnx train --dataset digits --model mlp --backend torch --dtype float64
    nnx evaluate runs/mnist1d-cnn/model.npz --backend array_api_strict
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_open
from .training import signals

#: Default hyper-parameters per model (used when the option is not given).
RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {"optimizer": "adam", "lr": 1e-3, "epochs": 30, "batch_size": 32, "patience": 10},
    "seed_cnn": {"optimizer": "adam", "lr": 1e-3, "epochs": 30, "batch_size": 32, "patience": 10},
    # the MNIST-1D paper's MLP recipe (Adam 1e-2); it overfits fast: early stopping
    "mlp": {"optimizer": "adam", "lr": 1e-2, "epochs": 200, "batch_size": 64, "patience": 20},
}


def _parser() -> argparse.ArgumentParser:
    from . import datasets, models

    parser = argparse.ArgumentParser(
        prog="nnx", description="Train and evaluate nnx models from the command line."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate}")

    t = sub.add_parser(
        "train",
        help="train a model and write history.csv, learning_curve.png, model.npz",
        description=(
            "Train a model on a data set; report the held-out test accuracy. Unset "
            "hyper-parameters take the model's recipe: "
            + "; ".join(
                f"{m}: {r['optimizer']} lr={r['lr']} epochs={r['epochs']} "
                f"batch={r['batch_size']} patience={r['patience']}"
                for m, r in RECIPES.items()
            )
        ),
    )
    t.add_argument("--dataset", default="mnist1d", choices=sorted(datasets.DATASETS))
    t.add_argument("--model", default="cnn", choices=sorted(models.MODELS))
    _backend_args(t)
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--optimizer", default=None, choices=["sgd", "momentum", "nesterov", "adam"])
    t.add_argument("--lr", type=float, default=None, help="learning rate (eps for sgd)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument(
        "--val-size",
        type=float,
        default=0.1,
        help="fraction of the training set held out for early stopping (default 0.1)",
    )
    t.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early-stopping patience in epochs, 0 = off (default: the recipe's)",
    )
    t.add_argument("--seed", type=int, default=0, help="initialisation and shuffle seed")
    t.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<model>)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose checkpoint is in --out (same arguments)",
    )
    _threads_arg(t)
    _progress_args(t)

    e = sub.add_parser("evaluate", help="test accuracy of a saved model")
    e.add_argument("model_path", help="a model file written by nnx train / nnx.save")
    e.add_argument("--dataset", default=None, help="default: the one recorded in the file")
    _backend_args(e)
    e.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _threads_arg(e)
    return parser


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help=(
            "CPU threads of the BLAS (NumPy) and of PyTorch; 0 keeps the libraries' "
            "default. Default 1: the small matrix products of these models run faster "
            "on one thread, and much faster on a busy machine"
        ),
    )


@contextlib.contextmanager
def limit_threads(n: int, torch: bool = False) -> Iterator[None]:
    """Limit BLAS (through threadpoolctl, when installed) and, with ``torch`` or when
    PyTorch is already imported, PyTorch's CPU threads."""
    if n < 0:
        raise ValueError(f"--threads must be >= 0, got {n}")
    if n == 0:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=n, user_api="blas"))
        if torch:
            with contextlib.suppress(ImportError):
                import torch as _torch  # noqa: F401
        lib = sys.modules.get("torch")
        if lib is not None:
            saved = lib.get_num_threads()
            lib.set_num_threads(n)
            stack.callback(lib.set_num_threads, saved)
        yield


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "cupy", "torch", "array_api_strict"],
        help="array library (default numpy)",
    )
    p.add_argument("--device", default=None, help="e.g. cuda:0 (cupy, torch)")


def _progress_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: only in a terminal)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no bars")
    p.add_argument("--quiet", action="store_true", help="print only the final result")


def _fail(msg: str) -> int:
    print(f"nnx: error: {msg}", file=sys.stderr)
    return 2


def _positive(name: str, value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"--{name} must be positive, got {value}")


CHECKPOINT = "checkpoint.npz"
ARGS = "args.json"
#: Arguments saved in ``args.json`` and taken back by ``--resume``.
_RUN_ARGS = (
    "dataset", "model", "backend", "device", "dtype", "optimizer", "lr", "epochs",
    "batch_size", "val_size", "patience", "seed",
)  # fmt: skip


class TrainingFailed(Exception):
    """Training stopped by an error after the outputs were written (exit status 1)."""


def _check_writable(out: Path, need: int) -> None:
    """Fail before training when ``out`` cannot take the outputs (read-only, full)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as f:
            f.write(b"nnx")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ValueError(f"output folder {str(out)!r} is not writable: {exc}") from None
    free = shutil.disk_usage(out).free
    if free < need:
        raise ValueError(
            f"output folder {str(out)!r} has {free:,} bytes free; the model, its checkpoint "
            f"and the history need about {need:,}"
        )


def _resolve(args: argparse.Namespace, out: Path) -> None:
    """``--resume``: take the run's arguments back from ``args.json``."""
    path = out / ARGS
    if not (out / CHECKPOINT).exists():
        raise ValueError(
            f"--resume: no checkpoint in {str(out)!r} (the run finished, or never started); "
            f"run without --resume to start a new one"
        )
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--resume: cannot read {str(path)!r}: {exc}") from None
    for key in _RUN_ARGS:
        if key in saved:
            setattr(args, key, saved[key])


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``nnx train``; returns the metrics written to ``metrics.json``.

    The output folder is checked (writable, enough space) before training; a
    checkpoint is written there after every epoch (``--resume`` continues from it) and
    removed at the end. Ctrl-C or SIGTERM keeps the finished epochs (SIGTERM: exit 143,
    see :func:`main`); a numerical blow-up writes the history and the last good model,
    then fails.
    """
    import nnx

    out = Path(args.out or f"runs/{args.dataset}-{args.model}")
    if args.resume:
        _resolve(args, out)
    elif (out / CHECKPOINT).exists():
        raise ValueError(
            f"{str(out)!r} holds the checkpoint of an interrupted run: pass --resume to "
            f"continue it, or delete {str(out / CHECKPOINT)!r} (or choose another --out)"
        )
    recipe = dict(RECIPES[args.model])
    for key in ("optimizer", "lr", "epochs", "batch_size", "patience"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    for key in ("lr", "epochs", "batch_size"):
        _positive(key.replace("_", "-"), recipe[key])
    if not math.isfinite(recipe["lr"]):
        raise ValueError(f"--lr must be finite, got {recipe['lr']}")
    if not 0.0 < args.val_size < 1.0:
        raise ValueError(f"--val-size must lie in (0, 1), got {args.val_size}")
    if recipe["patience"] < 0:
        raise ValueError(f"--patience must be >= 0, got {recipe['patience']}")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    t0 = time.perf_counter()
    X, y, X_test, y_test = nnx.datasets.load(args.dataset)
    t_data = time.perf_counter() - t0
    classes = int(max(y.max(), y_test.max())) + 1
    failure: FloatingPointError | None = None
    with nnx.use_backend(args.backend, args.device):
        nnx.set_default_dtype(args.dtype)
        nnx.manual_seed(args.seed)
        net = nnx.models.build(args.model, X.shape[1], X.shape[2], classes)
        name = recipe["optimizer"]
        opt = None if name == "sgd" else nnx.optimizers.get(name, recipe["lr"])
        optim = nnx.Optim(net, nnx.CELogSoftmax(), eps=recipe["lr"], optimizer=opt)
        itemsize = 8 if args.dtype == "float64" else 4
        _check_writable(out, net.num_parameters() * itemsize * 6 + (1 << 20))
        if not args.resume:
            run_args = {k: getattr(args, k) for k in _RUN_ARGS}
            with atomic_open(out / ARGS, "w") as f:
                f.write(json.dumps(run_args, indent=2) + "\n")
        say(
            f"nnx train: {args.dataset} ({X.shape[0]} train / {X_test.shape[0]} test, "
            f"shape {X.shape[1:]}), model {args.model} ({net.num_parameters():,} "
            f"parameters), backend {args.backend}/{args.dtype}, {name} lr={recipe['lr']}, "
            f"{recipe['epochs']} epochs of batch {recipe['batch_size']}, seed {args.seed}"
            + (f", resuming from {out / CHECKPOINT}" if args.resume else "")
        )

        def log(r: dict[str, float]) -> None:
            nnx.training.write_csv(optim.history, out / "history.csv")  # kill -9 keeps it
            if not bars_shown:
                say(
                    f"epoch {r['epoch']:3d}  loss {r['loss_train']:.4f}  "
                    f"val_loss {r['loss_test']:.4f}  acc {r['score_train']:.4f}  "
                    f"val_acc {r['score_test']:.4f}"
                )

        from .training import Progress

        bars_shown = not args.quiet and Progress.resolve(args.progress) is not None
        t1 = time.perf_counter()
        try:
            optim.SGD_eval(
                X,
                y,
                recipe["batch_size"],
                recipe["epochs"],
                test_size=args.val_size,
                patience=recipe["patience"] or None,
                shuffle_test=True,
                seed=args.seed,
                progress=False if args.quiet else args.progress,
                callback=log,
                checkpoint=out / CHECKPOINT,
            )
        except FloatingPointError as exc:
            failure = exc
        t_train = time.perf_counter() - t1
        history = dict(optim.history)
        test_acc = optim.score(X_test, y_test)
        loss_te, _ = optim.evaluate(X_test, y_test)
    epochs_run = len(history["epoch"])
    best = optim.best_epoch if failure is None else None
    metrics = {
        "dataset": args.dataset,
        "model": args.model,
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        **recipe,
        "epochs_run": epochs_run,
        "best_epoch": best,
        "interrupted": optim.interrupted,
        "terminated": optim.terminated,
        "error": None if failure is None else str(failure),
        "val_accuracy": float(history["score_test"][best - 1]) if best else None,
        "test_accuracy": test_acc,
        "test_loss": loss_te,
        "train_seconds": round(t_train, 3),
        "data_seconds": round(t_data, 3),
        "parameters": net.num_parameters(),
    }
    nnx.training.write_csv(history, out / "history.csv")
    if epochs_run:
        try:
            nnx.training.plot_history(
                history,
                out / "learning_curve.png",
                title=f"{args.model} on {args.dataset}",
                labels=("train", "validation"),
            )
        except ImportError as exc:
            say(f"nnx train: no learning-curve PNG: {exc}")
    nnx.save(net, out / "model.npz", metadata=metrics)
    with atomic_open(out / "metrics.json", "w") as f:
        f.write(json.dumps(metrics, indent=2) + "\n")
    if failure is not None:
        raise TrainingFailed(
            f"{failure} (try a smaller --lr); the history and the model of the last good "
            f"step are in {out}/"
        )
    if optim.interrupted:
        how = "terminated (SIGTERM)" if optim.terminated else "interrupted"
        say(
            f"{how} after {epochs_run} finished epoch(s); continue with: nnx train --resume "
            f"--out {out}"
        )
    print(
        f"test accuracy: {test_acc:.4f} ({round(test_acc * X_test.shape[0])}/{X_test.shape[0]})"
        f"  [best epoch {optim.best_epoch} of {metrics['epochs_run']}, "
        f"train {t_train:.1f}s]  -> {out}/",
        flush=True,
    )
    return metrics


def evaluate(args: argparse.Namespace) -> float:
    """Run ``nnx evaluate``; returns the test accuracy."""
    import nnx

    header = nnx.serialization.read_header(args.model_path)
    dataset = args.dataset or header.get("metadata", {}).get("dataset")
    if dataset is None:
        raise ValueError("the model file records no data set; pass --dataset")
    _, _, X_test, y_test = nnx.datasets.load(dataset)
    with nnx.use_backend(args.backend, args.device):
        net = nnx.load(args.model_path, dtype=args.dtype)
        acc = nnx.Optim(net, nnx.CELogSoftmax()).score(X_test, y_test)
    print(f"test accuracy: {acc:.4f} on {dataset} ({args.backend}/{args.dtype})")
    return acc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnx`` console script and ``python -m nnx``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with (
            signals.sigterm_as_interrupt(),
            limit_threads(args.threads, torch=args.backend == "torch"),
        ):
            if args.command == "train":
                metrics = train(args)
                if metrics["terminated"]:
                    return 128 + int(signals.Terminated.signum)
            else:
                evaluate(args)
    except (ValueError, ImportError, RuntimeError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except FloatingPointError as exc:
        return _fail(f"{exc} (try a smaller --lr)")
    except TrainingFailed as exc:
        print(f"nnx: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing the outputs
        return _fail(f"{exc}")
    except signals.Terminated:
        return 128 + int(signals.Terminated.signum)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
