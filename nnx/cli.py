"""Command line: ``nnx train`` / ``python -m nnx train`` and ``nnx evaluate``.

``nnx train`` trains one of :mod:`nnx.models` on one of :mod:`nnx.datasets` with
:meth:`nnx.Optim.SGD_eval` (a validation split of the training set drives early
stopping; the best epoch is kept), then reports the accuracy on the data set's
held-out test set, and writes to the output folder:

- ``history.csv``: epoch, loss, val_loss, acc, val_acc (``val_*``: the validation
  split, a held-out part of the training set; ``acc``: accuracy);
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
    nnx train --dataset digits --model cnn2d   # 8x8 images, Conv2D + BatchNorm + Dropout
    nnx evaluate runs/mnist1d-cnn/model.npz --backend array_api_strict

Data-parallel on several processes, with the same arguments (``batch_size`` stays the
global batch; rank 0 prints and writes the files and the checkpoint, which every rank
resumes from: the output folder must be on a file system every rank sees)::

    mpiexec -n 4 nnx train --model cnn --batch-size 256
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
    "simple_cnn": {"optimizer": "adam", "lr": 1e-3, "epochs": 30, "batch_size": 32, "patience": 10},
    # the MNIST-1D paper's MLP recipe (Adam 1e-2); it overfits fast: early stopping.
    # With momentum (steps up to 10x sgd's) 1e-2 diverges: momentum_lr, measured
    "mlp": {
        "optimizer": "adam",
        "lr": 1e-2,
        "momentum_lr": 1e-3,
        "epochs": 200,
        "batch_size": 64,
        "patience": 20,
    },
    # images (--dataset digits): 98.3-99.2% test accuracy (seeds 0-2), about 20 s
    "cnn2d": {"optimizer": "adam", "lr": 1e-3, "epochs": 20, "batch_size": 32, "patience": 8},
}


#: The files ``nnx train`` writes into its output folder.
CHECKPOINT = "checkpoint.npz"
ARGS = "args.json"
RUN_FILES = (
    "history.csv",
    "learning_curve.png",
    "model.npz",
    "metrics.json",
    CHECKPOINT,
    ARGS,
)


def _recipe_default(key: str) -> str:
    return "the model's recipe: " + ", ".join(f"{m} {r[key]}" for m, r in RECIPES.items())


def _model_name(name: str) -> str:
    from . import models

    return models.ALIASES.get(name, name)  # old names (seed_cnn) still accepted


def _parser() -> argparse.ArgumentParser:
    from . import __version__, datasets, models

    parser = argparse.ArgumentParser(
        prog="nnx", description="Train and evaluate nnx models from the command line."
    )
    parser.add_argument("--version", action="version", version=f"nnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate}")

    t = sub.add_parser(
        "train",
        help="train a model and write history.csv, learning_curve.png, model.npz",
        description=(
            "Train a model on a data set, holding out a validation split of the training "
            "set for early stopping; report the accuracy on the data set's test set. "
            "Started by an MPI launcher (mpiexec -n 4 nnx train ..., srun), the processes "
            "train data-parallel with the same arguments: --batch-size is the global batch, "
            "each process takes its share, rank 0 prints one result and writes the files "
            "(pip install mpi4py mpich). Unset hyper-parameters take the model's recipe: "
            + "; ".join(
                f"{m}: {r['optimizer']} lr={r['lr']} epochs={r['epochs']} "
                f"batch={r['batch_size']} patience={r['patience']}"
                for m, r in RECIPES.items()
            )
        ),
    )
    t.add_argument(
        "--dataset",
        default="mnist1d",
        choices=sorted(datasets.DATASETS),
        help="data set (default mnist1d)",
    )
    t.add_argument(
        "--model",
        default="cnn",
        type=_model_name,
        choices=sorted(models.MODELS),
        help="network (default cnn; seed_cnn is an old name of simple_cnn)",
    )
    _backend_args(t)
    t.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="(default float32)"
    )
    t.add_argument(
        "--optimizer",
        default=None,
        choices=["sgd", "momentum", "nesterov", "adam"],
        help=f"(default: {_recipe_default('optimizer')})",
    )
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help=(
            f"learning rate, eps for sgd (default: {_recipe_default('lr')}; with momentum "
            f"or nesterov, mlp 0.001)"
        ),
    )
    t.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"most epochs; early stopping may end sooner (default: {_recipe_default('epochs')})",
    )
    t.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"(default: {_recipe_default('batch_size')})",
    )
    t.add_argument(
        "--val-size",
        type=float,
        default=0.1,
        help="fraction of the training set held out as the validation split, which "
        "drives early stopping (default 0.1)",
    )
    t.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better validation accuracy, 0 = "
        f"never (default: {_recipe_default('patience')})",
    )
    t.add_argument(
        "--seed", type=int, default=0, help="initialisation and shuffle seed (default 0)"
    )
    t.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/<dataset>-<model>, or runs/<dataset>-<model>-2, "
        "-3... when that one already holds a run)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run files of an existing --out folder (default: refuse)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose checkpoint is in --out, with its arguments "
        "(others given here are refused) (default: start a new run)",
    )
    _data_cache_arg(t)
    _threads_arg(t)
    _progress_args(t)

    e = sub.add_parser("evaluate", help="test accuracy of a saved model")
    e.add_argument("model_path", help="a model file written by nnx train / nnx.save")
    e.add_argument(
        "--dataset",
        default=None,
        choices=sorted(datasets.DATASETS),
        help="(default: the one recorded in the model file)",
    )
    _backend_args(e)
    e.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="(default float32)"
    )
    _data_cache_arg(e)
    _threads_arg(e)
    return parser


def _data_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-cache",
        default=None,
        metavar="FOLDER|off",
        help="where generated data sets are cached, or off (default: $NNX_DATA_CACHE if "
        "set, else the user's cache folder, ~/.cache/nnx/datasets on Linux)",
    )


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
        choices=["numpy", "cupy", "torch", "array_api_strict", "jax"],
        help="array library (default numpy)",
    )
    p.add_argument(
        "--device", default=None, help="e.g. cuda:0, for cupy and torch (default: the library's)"
    )


def _progress_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: only in a terminal)",
    )
    g.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no bars (default: off)"
    )
    p.add_argument(
        "--quiet", action="store_true", help="print only the final result (default: off)"
    )


def _fail(msg: str, exc: BaseException | None = None) -> int:
    rank = ""
    if exc is not None:  # under mpiexec: the other ranks stop now, not at their timeout
        from .distributed import notify_failure

        rank = notify_failure(exc)
    # every rank that fails says so: before the ranks connect, an error may be one
    # machine's own (its output folder), and no other rank could report it
    print(f"nnx: error: {rank}{msg}", file=sys.stderr)
    return 2


def _positive(name: str, value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"--{name} must be positive, got {value}")


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
    defaults = vars(_parser().parse_args(["train"]))
    differ = [
        f"--{key.replace('_', '-')} {getattr(args, key)} (the run's: {saved[key]})"
        for key in _RUN_ARGS
        if key in saved and getattr(args, key) not in (defaults[key], saved[key])
    ]
    if differ:  # given on this command line, and not what the run was started with
        raise ValueError(
            f"--resume continues the run with its own arguments, but this command sets "
            f"{', '.join(differ)}: drop them, or start a new run without --resume"
        )
    for key in _RUN_ARGS:
        if key in saved:
            setattr(args, key, saved[key])


def _loss(value: float) -> str:
    """Four decimals, or four significant digits once a diverging loss is huge."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def epoch_line(record: dict[str, float]) -> str:
    """The line printed after each epoch when no progress bars are shown.

    >>> from nnx.cli import epoch_line
    >>> epoch_line({"epoch": 3, "loss_train": 0.5, "loss_test": 0.6, "score_train": 0.9,
    ...             "score_test": 0.8})
    'epoch   3  loss 0.5000  val_loss 0.6000  acc 0.9000  val_acc 0.8000'
    >>> epoch_line({"epoch": 4, "loss_train": 3.7e36, "loss_test": float("inf"),
    ...             "score_train": 0.1, "score_test": 0.1})
    'epoch   4  loss 3.7e+36  val_loss inf  acc 0.1000  val_acc 0.1000'
    """
    r = record
    return (
        f"epoch {r['epoch']:3d}  loss {_loss(r['loss_train'])}  val_loss {_loss(r['loss_test'])}  "
        f"acc {r['score_train']:.4f}  val_acc {r['score_test']:.4f}"
    )


def _holds_run(folder: Path) -> list[str]:
    """The run files already in ``folder`` (empty when it is new or holds none)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def output_folder(args: argparse.Namespace) -> tuple[Path, str | None]:
    """Where ``nnx train`` writes, and a note for the user when it is not the obvious one.

    A run folder is never overwritten silently: an explicit ``--out`` that already holds
    a run is refused unless ``--overwrite``; the default ``runs/<dataset>-<model>`` moves
    on to the first free ``runs/<dataset>-<model>-2``, ``-3``...
    """
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        found = _holds_run(out)
        if found and not args.overwrite:
            raise ValueError(
                f"--out {out}/ already holds a run ({', '.join(found)}); pass --overwrite "
                f"to replace those files, or choose another --out"
            )
        return out, None
    base = Path("runs") / f"{args.dataset}-{args.model}"
    if args.overwrite or not _holds_run(base):
        return base, None
    n = 2
    while _holds_run(Path(f"{base}-{n}")) or Path(f"{base}-{n}").is_file():
        n += 1
    out = Path(f"{base}-{n}")
    return out, f"{base}/ holds an earlier run: writing to {out}/ (--overwrite reuses {base}/)"


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``nnx train``; returns the metrics written to ``metrics.json``.

    The output folder is checked (writable, enough space) before training; a
    checkpoint is written there after every epoch (``--resume`` continues from it) and
    removed at the end. Ctrl-C or SIGTERM keeps the finished epochs (SIGTERM: exit 143,
    see :func:`main`); a numerical blow-up writes the history and the last good model,
    then fails.
    """
    import nnx

    if args.resume:
        out, note = Path(args.out or f"runs/{args.dataset}-{args.model}"), None
        _resolve(args, out)
    else:
        leftover = args.out is not None and (Path(args.out) / CHECKPOINT).exists()
        if leftover and not args.overwrite:
            raise ValueError(
                f"{args.out!r} holds the checkpoint of an interrupted run: pass --resume "
                f"to continue it, or --overwrite to start over (or choose another --out)"
            )
        out, note = output_folder(args)
        if (out / CHECKPOINT).exists():  # --overwrite: start over, not from the checkpoint
            (out / CHECKPOINT).unlink()
    recipe = dict(RECIPES[args.model])
    momentum_lr = recipe.pop("momentum_lr", None)
    for key in ("optimizer", "lr", "epochs", "batch_size", "patience"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    if args.lr is None and momentum_lr and recipe["optimizer"] in ("momentum", "nesterov"):
        recipe["lr"] = momentum_lr
    for key in ("lr", "epochs", "batch_size"):
        _positive(key.replace("_", "-"), recipe[key])
    if not math.isfinite(recipe["lr"]):
        raise ValueError(f"--lr must be finite, got {recipe['lr']}")
    if not 0.0 < args.val_size < 1.0:
        raise ValueError(f"--val-size must lie in (0, 1), got {args.val_size}")
    if recipe["patience"] < 0:
        raise ValueError(f"--patience must be >= 0, got {recipe['patience']}")
    comm = nnx.distributed.init()  # one process unless started by mpiexec / srun
    root = comm.rank == 0
    quiet = args.quiet or not root
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if note:
        say(f"nnx train: {note}")

    t0 = time.perf_counter()
    images = args.model in nnx.models.IMAGE_MODELS
    if images and args.dataset not in nnx.datasets.IMAGE_DATASETS:
        raise ValueError(
            f"--model {args.model} takes images; --dataset {args.dataset} holds 1-D signals "
            f"(image data sets: {', '.join(nnx.datasets.IMAGE_DATASETS)})"
        )
    X, y, X_test, y_test = nnx.datasets.load(args.dataset, cache=args.data_cache, images=images)
    t_data = time.perf_counter() - t0
    classes = int(max(y.max(), y_test.max())) + 1
    patience = recipe["patience"] or None
    failure: FloatingPointError | None = None
    with nnx.use_backend(args.backend, args.device):
        nnx.set_default_dtype(args.dtype)  # this block's only (context-local)
        nnx.manual_seed(args.seed)
        net = nnx.models.for_input(args.model, X.shape[1:], classes)
        name = recipe["optimizer"]
        opt = None if name == "sgd" else nnx.optimizers.get(name, recipe["lr"])
        optim = nnx.Optim(
            net,
            nnx.CELogSoftmax(),
            eps=recipe["lr"],
            optimizer=opt,
            comm=comm if comm.size > 1 else None,
        )
        itemsize = 8 if args.dtype == "float64" else 4
        if root:
            _check_writable(out, net.num_parameters() * itemsize * 6 + (1 << 20))
        if root and not args.resume:
            run_args = {k: getattr(args, k) for k in _RUN_ARGS}
            with atomic_open(out / ARGS, "w") as f:
                f.write(json.dumps(run_args, indent=2) + "\n")
        stopping = f"early stopping patience {patience}" if patience else "no early stopping"
        ranks = f", {comm.size} ranks ({comm.engine})" if comm.size > 1 else ""
        say(
            f"nnx train: {args.dataset} ({X.shape[0]} train / {X_test.shape[0]} test, "
            f"shape {X.shape[1:]}), model {args.model} ({net.num_parameters():,} "
            f"parameters), backend {args.backend}/{args.dtype}, {name} lr={recipe['lr']}, "
            f"up to {recipe['epochs']} epochs of batch {recipe['batch_size']} "
            f"({stopping}), validation split {args.val_size:g}, seed {args.seed}{ranks}"
            + (f", resuming from {out / CHECKPOINT}" if args.resume else "")
        )

        def log(r: dict[str, float]) -> None:
            if not root:
                return
            # the history so far, every epoch: a run killed with -9 keeps it
            nnx.training.write_csv(
                optim.history, out / "history.csv", names=nnx.training.VALIDATION_NAMES
            )
            if not bars_shown:
                say(epoch_line(r))

        from .training import Progress

        bars_shown = not quiet and Progress.resolve(args.progress) is not None
        t1 = time.perf_counter()
        try:
            optim.SGD_eval(
                X,
                y,
                recipe["batch_size"],
                recipe["epochs"],
                test_size=args.val_size,
                patience=patience,
                shuffle_test=True,
                seed=args.seed,
                restore_best=True,
                progress=False if quiet else args.progress,
                callback=log,
                checkpoint=out / CHECKPOINT,  # rank 0 writes it, every rank resumes from it
            )
        except FloatingPointError as exc:
            failure = exc
        t_train = time.perf_counter() - t1
        history = dict(optim.history)
        test_acc = optim.score(X_test, y_test)
        loss_te, _ = optim.evaluate(X_test, y_test)
    epochs_run = len(history["epoch"])
    best = optim.best_epoch if failure is None else None
    val_acc = float(history["score_test"][best - 1]) if best else None
    stopped_early = failure is None and not optim.interrupted and epochs_run < recipe["epochs"]
    metrics = {
        "dataset": args.dataset,
        "model": args.model,
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        **recipe,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "best_epoch": best,
        "interrupted": optim.interrupted,
        "terminated": optim.terminated,
        "error": None if failure is None else str(failure),
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "test_loss": loss_te,
        "train_seconds": round(t_train, 3),
        "data_seconds": round(t_data, 3),
        "parameters": net.num_parameters(),
        "ranks": comm.size,
    }
    if not root:  # every rank holds the same result; rank 0 reports it
        return metrics
    nnx.training.write_csv(history, out / "history.csv", names=nnx.training.VALIDATION_NAMES)
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
    if stopped_early:
        say(
            f"early stopping after epoch {epochs_run} of {recipe['epochs']}: no better "
            f"validation accuracy for {patience} epochs"
        )
    if best is not None:
        say(f"kept the parameters of epoch {best}, the best validation accuracy ({val_acc:.4f})")
    print(
        f"test accuracy: {test_acc:.4f} ({round(test_acc * X_test.shape[0])}/{X_test.shape[0]})"
        f"  [best epoch {best} of {epochs_run}, train {t_train:.1f}s]  -> {out}/",
        flush=True,
    )
    return metrics


def _check_model_file(path: Path) -> None:
    """Clear messages for what is not a model file, before any attempt to read it."""
    if path.is_dir():
        inside = path / "model.npz"
        hint = f"; the model of a run is {inside}" if inside.is_file() else ""
        raise ValueError(f"{path} is a folder, not a model file{hint}")
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # an .npz is a zip archive
            raise ValueError(
                f"{path} is not a model file: nnx evaluate reads the model.npz that nnx "
                f"train writes (or a file of nnx.save), and this is not an .npz archive"
            )


def evaluate(args: argparse.Namespace) -> float:
    """Run ``nnx evaluate``; returns the test accuracy."""
    import nnx

    _check_model_file(Path(args.model_path))
    header = nnx.serialization.read_header(args.model_path)
    dataset = args.dataset or header.get("metadata", {}).get("dataset")
    if dataset is None:
        raise ValueError("the model file records no data set; pass --dataset")
    images = header.get("metadata", {}).get("model") in nnx.models.IMAGE_MODELS
    _, _, X_test, y_test = nnx.datasets.load(dataset, cache=args.data_cache, images=images)
    with nnx.use_backend(args.backend, args.device):
        net = nnx.load(args.model_path, dtype=args.dtype)
        acc = nnx.Optim(net, nnx.CELogSoftmax()).score(X_test, y_test)
    print(f"test accuracy: {acc:.4f} on {dataset} ({args.backend}/{args.dtype})")
    return acc


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; under an MPI launcher only rank 0 prints the help or a usage
    error (every rank parses the same command line and exits the same way)."""
    from .distributed import launcher_rank

    if launcher_rank() == 0:
        return parser.parse_args(argv)
    with (
        open(os.devnull, "w") as quiet,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnx`` console script and ``python -m nnx``."""
    parser = _parser()
    args = _parse(parser, argv)
    try:
        with (
            signals.sigterm_as_interrupt(),
            limit_threads(args.threads, torch=args.backend == "torch"),
        ):
            if args.command == "train":
                metrics = train(args)
                if metrics["terminated"]:
                    return 128 + int(signals.Terminated.signum)
                if metrics["interrupted"]:  # Ctrl-C: the outputs are written, 128 + SIGINT
                    return 130
            else:
                evaluate(args)
    except (ValueError, ImportError, RuntimeError, OSError) as exc:
        return _fail(str(exc), exc)
    except FloatingPointError as exc:
        return _fail(f"{exc} (try a smaller --lr)", exc)
    except TrainingFailed as exc:
        print(f"nnx: error: {exc}", file=sys.stderr)
        return 1
    except signals.Terminated:
        return 128 + int(signals.Terminated.signum)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
