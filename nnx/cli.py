"""Command line: ``nnx train`` / ``python -m nnx train`` and ``nnx evaluate``.

``nnx train`` trains one of :mod:`nnx.models` on one of :mod:`nnx.datasets` with
:meth:`nnx.Optim.SGD_eval` (a validation split of the training set drives early
stopping; the best epoch is kept), then reports the accuracy on the data set's
held-out test set, and writes to the output folder:

- ``history.csv``: epoch, loss_train, loss_test, score_train, score_test (the
  ``*_test`` columns are the validation split);
- ``learning_curve.png``: loss and accuracy curves;
- ``model.npz``: the trained network (:func:`nnx.save`), loadable with :func:`nnx.load`;
- ``metrics.json``: the run's settings, test accuracy, times.

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
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``nnx train``; returns the metrics written to ``metrics.json``."""
    import nnx

    recipe = dict(RECIPES[args.model])
    for key in ("optimizer", "lr", "epochs", "batch_size", "patience"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    for key in ("lr", "epochs", "batch_size"):
        _positive(key.replace("_", "-"), recipe[key])
    if not 0.0 < args.val_size < 1.0:
        raise ValueError(f"--val-size must lie in (0, 1), got {args.val_size}")
    if recipe["patience"] < 0:
        raise ValueError(f"--patience must be >= 0, got {recipe['patience']}")
    out = Path(args.out or f"runs/{args.dataset}-{args.model}")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    t0 = time.perf_counter()
    X, y, X_test, y_test = nnx.datasets.load(args.dataset)
    t_data = time.perf_counter() - t0
    classes = int(max(y.max(), y_test.max())) + 1
    with nnx.use_backend(args.backend, args.device):
        saved_dtype = nnx.get_default_dtype()
        nnx.set_default_dtype(args.dtype)
        try:
            nnx.manual_seed(args.seed)
            net = nnx.models.build(args.model, X.shape[1], X.shape[2], classes)
            name = recipe["optimizer"]
            opt = None if name == "sgd" else nnx.optimizers.get(name, recipe["lr"])
            optim = nnx.Optim(net, nnx.CELogSoftmax(), eps=recipe["lr"], optimizer=opt)
            say(
                f"nnx train: {args.dataset} ({X.shape[0]} train / {X_test.shape[0]} test, "
                f"shape {X.shape[1:]}), model {args.model} ({net.num_parameters():,} "
                f"parameters), backend {args.backend}/{args.dtype}, {name} lr={recipe['lr']}, "
                f"{recipe['epochs']} epochs of batch {recipe['batch_size']}, seed {args.seed}"
            )

            def log(r: dict[str, float]) -> None:
                if not bars_shown:
                    say(
                        f"epoch {r['epoch']:3d}  loss {r['loss_train']:.4f}  "
                        f"val_loss {r['loss_test']:.4f}  acc {r['score_train']:.4f}  "
                        f"val_acc {r['score_test']:.4f}"
                    )

            from .training import Progress

            bars_shown = not args.quiet and Progress.resolve(args.progress) is not None
            t1 = time.perf_counter()
            optim.SGD_eval(
                X,
                y,
                recipe["batch_size"],
                recipe["epochs"],
                test_size=args.val_size,
                patience=recipe["patience"] or None,
                shuffle_test=True,
                seed=args.seed,
                restore_best=True,
                progress=False if args.quiet else args.progress,
                callback=log,
            )
            t_train = time.perf_counter() - t1
            history = dict(optim.history)
            test_acc = optim.score(X_test, y_test)
            loss_te, _ = optim.evaluate(X_test, y_test)
        finally:
            nnx.set_default_dtype(saved_dtype)
    metrics = {
        "dataset": args.dataset,
        "model": args.model,
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        **recipe,
        "epochs_run": len(history["epoch"]),
        "best_epoch": optim.best_epoch,
        "interrupted": optim.interrupted,
        "val_accuracy": float(history["score_test"][optim.best_epoch - 1])
        if optim.best_epoch
        else None,
        "test_accuracy": test_acc,
        "test_loss": loss_te,
        "train_seconds": round(t_train, 3),
        "data_seconds": round(t_data, 3),
        "parameters": net.num_parameters(),
    }
    out.mkdir(parents=True, exist_ok=True)
    nnx.training.write_csv(history, out / "history.csv")
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if optim.interrupted:
        say(f"interrupted after {metrics['epochs_run']} finished epoch(s)")
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
        with limit_threads(args.threads, torch=args.backend == "torch"):
            if args.command == "train":
                train(args)
            else:
                evaluate(args)
    except (ValueError, ImportError, RuntimeError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except FloatingPointError as exc:
        return _fail(f"{exc} (try a smaller --lr)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
