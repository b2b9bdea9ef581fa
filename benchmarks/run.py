#!/usr/bin/env python
"""nnx vs PyTorch: time a full training step of the same model on the same data.

One command::

    python benchmarks/run.py                      # full CPU suite (numpy vs torch CPU)
    python benchmarks/run.py --quick              # a smaller, faster run
    python benchmarks/run.py --backend cupy --device cuda --batch-sizes 32,256,1024
    python benchmarks/run.py --save out.json --markdown out.md --rst out.rst
    python benchmarks/run.py --compare benchmarks/results/reference-cpu.json
    nox -s bench -- --quick

A *step* is what training does for one batch: zero the gradients, forward, loss,
backward, parameter update. nnx runs ``nnx.Optim(net, nnx.CELogSoftmax(), eps).step``
(plain SGD); PyTorch runs ``opt.zero_grad(); loss = CrossEntropyLoss(reduction="sum")(
model(x), y); loss.backward(); opt.step(); loss.item()`` with ``torch.optim.SGD`` on an
``nn.Sequential`` of the same architecture (channels-first ``Conv1d``, same math; nnx's loss is the sum of
the per-sample losses, hence ``reduction="sum"``). Both start from the same weights
(copied from nnx, with the flatten order permuted) and see the same float32 data, and
the first-step losses are compared as a sanity check. Both steps bring the batch loss
back to Python: nnx's ``Optim.step`` reads it for its non-finite check, the PyTorch step
calls ``loss.item()``, as a training loop that logs its loss does. On a GPU that read is
the one synchronisation per step of both (on the CPU it costs about a microsecond).

Timing: warm-up steps are run and discarded; then nnx and PyTorch alternate blocks of
``k`` steps (the order flips every round, to cancel drift), ``k`` chosen so that a block
lasts about ``--block-ms``; the figure is the median over the rounds of the per-step
time of a block. On a GPU each block ends with a device synchronisation
(``cupy.cuda.Device().synchronize()``, ``torch.cuda.synchronize()``). Both libraries
get the same thread count (``torch.set_num_threads`` and threadpoolctl for BLAS).
The cyclic garbage collector is paused during timed blocks (for both).

Sections: ``step`` (every model at every ``--batch-sizes``), ``batch`` (seed CNN, cost
per sample for batch sizes 1..1024), ``length`` (seed CNN, cost per sample for input
lengths 64..4096, the first Linear's input size following the length) and ``memory``
(peak memory allocated during one step above what was live before it: tracemalloc for
NumPy, the PyTorch profiler's allocation events for PyTorch on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA, a CuPy memory hook for CuPy).

OpenBLAS: on machines that set ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (forcing an
older kernel than the CPU supports), the script re-executes itself without both, so
that NumPy's BLAS uses the kernel OpenBLAS detects, as PyTorch's own BLAS does. The
original values and the kernel that actually ran (threadpoolctl) are recorded in the
results; ``--keep-openblas-env`` keeps the variables. This only changes the
benchmark's own process, never tests or CI.

``--compare OLD.json`` prints every nnx/PyTorch ratio that got worse than in OLD by
more than ``--tolerance`` (relative); with ``--fail-on-regression`` the exit status is
1 when any did. It is a manual regression guard: CI runs no timed assertion.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ORIG_ENV_KEY = "NNX_BENCH_ORIGINAL_OPENBLAS"


# ---------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Time a full training step of nnx against PyTorch on the same models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds and sweep points")
    p.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "cupy", "torch", "array_api_strict"],
        help="nnx backend (PyTorch is always the reference)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="device for both libraries: cpu (default) or cuda / cuda:N",
    )
    p.add_argument(
        "--batch-sizes",
        type=_ints,
        default=None,
        help="for the step section (default: 64,256 for lenet, 32,256 for the others)",
    )
    p.add_argument(
        "--models",
        default="seed_cnn,mlp,mnist1d_cnn,lenet",
        help="comma-separated subset of seed_cnn, mlp, mnist1d_cnn, lenet",
    )
    p.add_argument(
        "--sections",
        default="step,batch,length,memory",
        help="comma-separated subset of step, batch, length, memory",
    )
    p.add_argument("--sweep-batch-sizes", type=_ints, default=None, help="batch section")
    p.add_argument("--sweep-lengths", type=_ints, default=None, help="length section")
    p.add_argument("--sweep-batch", type=int, default=32, help="batch size of the length sweep")
    p.add_argument(
        "--threads", type=int, default=None, help="threads for both (default: all cores)"
    )
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per library")
    p.add_argument("--block-ms", type=float, default=None, help="target duration of a block")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps per library")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of the process (for a loaded machine, with "
        "--threads 1 only, since waiting threads spin)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="SGD step size (both libraries)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="step section: also time nnx with Optim(cuda_graph=True) (cupy, torch on CUDA)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write the tables as Markdown")
    p.add_argument("--rst", type=Path, default=None, help="write the tables as reStructuredText")
    p.add_argument("--compare", type=Path, default=None, help="earlier JSON to compare ratios with")
    p.add_argument("--tolerance", type=float, default=0.25, help="relative ratio increase allowed")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 if a ratio got worse")
    p.add_argument(
        "--keep-openblas-env",
        action="store_true",
        help="do not remove OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from this process",
    )
    p.add_argument(
        "--no-torch",
        action="store_true",
        help="time nnx only (ratios are left empty); for machines without PyTorch",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODEL_NAMES)
    if unknown:
        p.error(f"--models: unknown model(s) {sorted(unknown)}; choose from {MODEL_NAMES}")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - {"step", "batch", "length", "memory"}
    if unknown:
        p.error(f"--sections: unknown section(s) {sorted(unknown)}")
    if args.clock == "cpu" and (args.backend == "cupy" or (args.device or "cpu") != "cpu"):
        p.error("--clock cpu measures CPU time: use it on the CPU only")
    if args.rounds is None:
        args.rounds = 7 if args.quick else 15
    if args.block_ms is None:
        args.block_ms = 10.0 if args.quick else 25.0
    if args.sweep_batch_sizes is None:
        args.sweep_batch_sizes = (
            [1, 8, 64, 512] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        )
    if args.sweep_lengths is None:
        args.sweep_lengths = (
            [64, 512, 4096] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096]
        )
    return args


def maybe_reexec_without_openblas_env(argv: list[str]) -> None:
    """Re-run this script without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (before numpy loads)."""
    if "--keep-openblas-env" in argv or ORIG_ENV_KEY in os.environ:
        return
    present = {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ}
    if not present or "numpy" in sys.modules:
        return
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    env[ORIG_ENV_KEY] = json.dumps(present)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


# ---------------------------------------------------------------------------------
# models: one spec, built by both libraries
# ---------------------------------------------------------------------------------
MODEL_NAMES = ["seed_cnn", "mlp", "mnist1d_cnn", "lenet"]
#: Step-section batch sizes when --batch-sizes is not given.
DEFAULT_BATCHES = {"lenet": [64, 256]}


def step_batches(args: argparse.Namespace, model: str) -> list[int]:
    if args.batch_sizes is not None:
        return args.batch_sizes
    return DEFAULT_BATCHES.get(model, [32, 256])


def model_spec(name: str, length: int | None = None) -> tuple[list[tuple], tuple[int, ...], int]:
    """Layers, nnx input shape without batch, number of classes.

    Layer tuples: ("conv", k, chan_in, chan_out, stride, bias), ("maxpool", k, stride),
    ("avgpool", k, stride), ("conv2d", k, chan_in, chan_out, stride, bias),
    ("maxpool2d", k, stride), ("flatten",), ("linear", in, out), ("relu",), ("tanh",).
    """
    if name == "seed_cnn":
        L = 256 if length is None else length
        pooled = ((L - 3) + 1 - 2) // 2 + 1
        layers = [
            ("conv", 3, 1, 32, 1, False),
            ("maxpool", 2, 2),
            ("flatten",),
            ("linear", pooled * 32, 100),
            ("relu",),
            ("linear", 100, 10),
        ]
        return layers, (L, 1), 10
    if name == "mlp":
        return [("linear", 256, 100), ("tanh",), ("linear", 100, 10)], (256,), 10
    if name == "mnist1d_cnn":
        return mnist1d_spec()
    if name == "lenet":  # LeNet-5 style on 28x28x1 images, as in issue 14
        layers = [
            ("conv2d", 5, 1, 6, 1, False),
            ("relu",),
            ("maxpool2d", 2, 2),
            ("conv2d", 5, 6, 16, 1, False),
            ("relu",),
            ("maxpool2d", 2, 2),
            ("flatten",),
            ("linear", 256, 120),
            ("relu",),
            ("linear", 120, 84),
            ("relu",),
            ("linear", 84, 10),
        ]
        return layers, (28, 28, 1), 10
    raise ValueError(name)


def mnist1d_spec() -> tuple[list[tuple], tuple[int, ...], int]:
    """The MNIST-1D CNN: ``nnx.models.cnn(40, 1, 10)`` when nnx.models has it.

    Fallback (length-40 signals, 10 classes), used by older nnx versions:
    Conv1D(5,1,32) ReLU MaxPool1D(2,2) Conv1D(3,32,64) ReLU MaxPool1D(2,2) Flatten
    Linear(512,100) ReLU Linear(100,10).
    """
    spec = _spec_from_nnx_models()
    if spec is not None:
        return spec
    return (
        [
            ("conv", 5, 1, 32, 1, False),
            ("relu",),
            ("maxpool", 2, 2),
            ("conv", 3, 32, 64, 1, False),
            ("relu",),
            ("maxpool", 2, 2),
            ("flatten",),
            ("linear", 8 * 64, 100),
            ("relu",),
            ("linear", 100, 10),
        ],
        (40, 1),
        10,
    )


def _spec_from_nnx_models() -> tuple[list[tuple], tuple[int, ...], int] | None:
    """Translate ``nnx.models.cnn(40, 1, 10)`` layer by layer, if nnx has it."""
    try:
        import nnx
        from nnx import models
    except ImportError:
        return None
    factory = getattr(models, "cnn", None)
    if not callable(factory):
        return None
    net = factory(40, 1, 10)
    layers: list[tuple] = []
    for m in net:
        if isinstance(m, nnx.Conv1D):
            layers.append(("conv", m.k_size, m.chan_in, m.chan_out, m.stride, bool(m.bias)))
        elif isinstance(m, nnx.MaxPool1D):
            layers.append(("maxpool", m.k_size, m.stride))
        elif isinstance(m, nnx.AvgPool1D):
            layers.append(("avgpool", m.k_size, m.stride))
        elif isinstance(m, nnx.Flatten):
            layers.append(("flatten",))
        elif isinstance(m, nnx.Linear) and m.bias:
            layers.append(("linear", m.input_size, m.output_size))
        elif isinstance(m, nnx.ReLU):
            layers.append(("relu",))
        elif isinstance(m, nnx.TanH):
            layers.append(("tanh",))
        else:  # a layer this benchmark cannot mirror in PyTorch: use the fallback
            return None
    return layers, (40, 1), layers[-1][2]


def _builders(nnx: Any, nn: Any) -> dict[str, tuple[Any, Any]]:
    """Layer kind -> (nnx constructor, PyTorch constructor), both taking the layer tuple."""
    return {
        "conv": (
            lambda t: nnx.Conv1D(t[1], t[2], t[3], stride=t[4], bias=t[5]),
            lambda t: nn.Conv1d(t[2], t[3], t[1], stride=t[4], bias=t[5]),
        ),
        "maxpool": (lambda t: nnx.MaxPool1D(t[1], t[2]), lambda t: nn.MaxPool1d(t[1], t[2])),
        "avgpool": (lambda t: nnx.AvgPool1D(t[1], t[2]), lambda t: nn.AvgPool1d(t[1], t[2])),
        "conv2d": (
            lambda t: nnx.Conv2D(t[1], t[2], t[3], stride=t[4], bias=t[5]),
            lambda t: nn.Conv2d(t[2], t[3], t[1], stride=t[4], bias=t[5]),
        ),
        "maxpool2d": (lambda t: nnx.MaxPool2D(t[1], t[2]), lambda t: nn.MaxPool2d(t[1], t[2])),
        "flatten": (lambda t: nnx.Flatten(), lambda t: nn.Flatten()),
        "linear": (lambda t: nnx.Linear(t[1], t[2]), lambda t: nn.Linear(t[1], t[2])),
        "relu": (lambda t: nnx.ReLU(), lambda t: nn.ReLU()),
        "tanh": (lambda t: nnx.TanH(), lambda t: nn.Tanh()),
    }


def build_nnx(nnx: Any, layers: list[tuple]) -> Any:
    make = _builders(nnx, None)
    return nnx.Sequential(*(make[layer[0]][0](layer) for layer in layers))


def build_torch(torch: Any, layers: list[tuple]) -> Any:
    make = _builders(None, torch.nn)
    return torch.nn.Sequential(*(make[layer[0]][1](layer) for layer in layers))


def copy_weights(nnx: Any, torch: Any, layers: list[tuple], net: Any, model: Any, in_shape) -> None:
    """Give the PyTorch model nnx's weights (channels-first, flatten order permuted)."""
    spatial = list(in_shape[:-1]) if len(in_shape) >= 2 else None  # (L,) or (H, W)
    chans = None
    with torch.no_grad():
        for layer, m, tm in zip(layers, net, model, strict=True):
            kind = layer[0]
            if kind in ("conv", "conv2d"):
                W = nnx.to_numpy(m.get_parameter("weight"))  # (K.., C, D) -> (D, C, K..)
                axes = (2, 1, 0) if kind == "conv" else (3, 2, 0, 1)
                tm.weight.copy_(torch.from_numpy(W.transpose(axes).copy()))
                if layer[5]:
                    tm.bias.copy_(torch.from_numpy(nnx.to_numpy(m.get_parameter("bias"))))
                spatial = [(n - layer[1]) // layer[4] + 1 for n in spatial]
                chans = layer[3]
            elif kind in ("maxpool", "avgpool", "maxpool2d"):
                spatial = [(n - layer[1]) // layer[2] + 1 for n in spatial]
            elif kind == "linear":
                W = nnx.to_numpy(m.get_parameter("weight"))  # (in, out)
                if chans is not None:  # first Linear after a channels-last Flatten
                    n = len(spatial)  # rows (*spatial, C) -> (C, *spatial)
                    perm = (n, *range(n), n + 1)
                    W = W.reshape(*spatial, chans, -1).transpose(perm).reshape(W.shape)
                    chans = None
                tm.weight.copy_(torch.from_numpy(W.T.copy()))
                tm.bias.copy_(torch.from_numpy(nnx.to_numpy(m.get_parameter("bias")).reshape(-1)))


# ---------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------
class Env:
    """Libraries, devices, synchronisation and thread settings for one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        import numpy as np

        sys.path.insert(0, str(ROOT))
        import nnx

        self.np, self.nnx, self.args = np, nnx, args
        self.gpu = args.backend == "cupy" or (args.device or "cpu").startswith("cuda")
        if args.backend == "cupy" and not (args.device or "cuda").startswith("cuda"):
            raise SystemExit("--backend cupy runs on a GPU: use --device cuda (or cuda:N)")
        nnx_device = None
        if args.device and args.device != "cpu":
            nnx_device = args.device
        nnx.set_backend(args.backend, nnx_device)
        nnx.set_default_dtype("float32")
        self.cupy = None
        if args.backend == "cupy":
            import cupy

            self.cupy = cupy
        self.torch = None
        if not args.no_torch:
            import torch

            self.torch = torch
            self.tdev = torch.device(args.device or "cpu")
            if self.tdev.type == "cuda" and not torch.cuda.is_available():
                raise SystemExit(
                    "--device cuda: torch.cuda.is_available() is False; install a CUDA "
                    "build of PyTorch or pass --no-torch"
                )
        self.threads = args.threads or os.cpu_count() or 1
        self._limits = None
        try:
            import threadpoolctl

            self._limits = threadpoolctl.threadpool_limits(limits=self.threads, user_api="blas")
            self.threadpoolctl = threadpoolctl
        except ImportError:
            self.threadpoolctl = None
        if self.torch is not None:
            self.torch.set_num_threads(self.threads)

    def sync(self) -> None:
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()
        if self.torch is not None and self.tdev.type == "cuda":
            self.torch.cuda.synchronize(self.tdev)
        if self.nnx.get_backend() == "torch" and self.torch is not None:
            dev = self.nnx.get_device()
            if dev is not None and getattr(dev, "type", "") == "cuda":
                self.torch.cuda.synchronize(dev)

    def describe(self) -> dict[str, Any]:
        np = self.np
        info: dict[str, Any] = {
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": self.threads,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "nnx": getattr(self.nnx, "__version__", "?"),
            "nnx_backend": self.nnx.get_backend(),
            "nnx_device": str(self.nnx.get_device()),
            "dtype": "float32",
            "clock": self.args.clock,
            "load_average_at_start": _loadavg(),
            "git_commit": _git_commit(),
        }
        original = os.environ.get(ORIG_ENV_KEY)
        info["openblas_env_removed"] = json.loads(original) if original else {}
        info["openblas_env_kept"] = {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ}
        if self.threadpoolctl is not None:
            info["blas"] = [
                {
                    k: d.get(k)
                    for k in ("internal_api", "version", "architecture", "num_threads", "prefix")
                }
                for d in self.threadpoolctl.threadpool_info()
                if d.get("user_api") == "blas"
            ]
        if self.torch is not None:
            t = self.torch
            info["torch"] = t.__version__
            info["torch_threads"] = t.get_num_threads()
            info["torch_device"] = str(self.tdev)
            if self.tdev.type == "cuda":
                info["torch_cuda"] = t.version.cuda
                info["torch_gpu"] = t.cuda.get_device_name(self.tdev)
        if self.cupy is not None:
            cp = self.cupy
            dev = cp.cuda.Device()
            props = cp.cuda.runtime.getDeviceProperties(dev.id)
            name = props.get("name", b"?")
            info["cupy"] = cp.__version__
            info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
            info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        return info


def _git_commit() -> str | None:
    """The commit of the nnx checkout being measured (``+dirty`` with local changes);
    ``NNX_COMMIT`` names it for a copy of the tree without its git history."""
    import subprocess

    if os.environ.get("NNX_COMMIT"):
        return os.environ["NNX_COMMIT"]

    try:
        run = lambda *cmd: subprocess.run(  # noqa: E731
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        head = run("rev-parse", "--short", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--", "nnx").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other jobs sharing the machine), if known."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# ---------------------------------------------------------------------------------
# one benchmark case
# ---------------------------------------------------------------------------------
class Case:
    """An nnx network and a PyTorch model with the same weights, data and step."""

    def __init__(self, env: Env, model: str, batch: int, length: int | None = None) -> None:
        self.env, self.model, self.batch = env, model, batch
        nnx, np = env.nnx, env.np
        layers, in_shape, classes = model_spec(model, length)
        self.layers, self.in_shape = layers, in_shape
        self.length = in_shape[0]
        nnx.manual_seed(env.args.seed)
        rng = np.random.default_rng(env.args.seed + 1)
        X = rng.standard_normal((batch, *in_shape)).astype(np.float32)
        y = rng.integers(0, classes, batch).astype(np.int64)
        self.net = build_nnx(nnx, layers)
        self.opt = nnx.Optim(self.net, nnx.CELogSoftmax(), eps=env.args.lr)
        self.X, self.y = nnx.asarray(X), nnx.asarray(y)
        self.nnx_step: Callable[[], Any] = lambda: self.opt.step(self.X, self.y)
        self.graph_step: Callable[[], Any] | None = None
        if getattr(env.args, "cuda_graph", False):
            # the same weights, stepped by CUDA graph replays (recorded on the first call)
            graphed = nnx.Optim(
                copy.deepcopy(self.net), nnx.CELogSoftmax(), eps=env.args.lr, cuda_graph=True
            )
            self.graph_step = lambda: graphed.step(self.X, self.y)
        self.torch_step: Callable[[], Any] | None = None
        self.loss_check: float | None = None
        if env.torch is not None:
            torch = env.torch
            tm = build_torch(torch, layers)
            copy_weights(nnx, torch, layers, self.net, tm, in_shape)
            tm = tm.to(env.tdev)
            # channels first for PyTorch (the MLP's rows stay as they are)
            Xt = X if len(in_shape) == 1 else np.ascontiguousarray(np.moveaxis(X, -1, 1))
            self.tX = torch.from_numpy(Xt).to(env.tdev)
            self.ty = torch.from_numpy(y).to(env.tdev)
            self.tmodel = tm
            topt = torch.optim.SGD(tm.parameters(), lr=env.args.lr)
            crit = torch.nn.CrossEntropyLoss(reduction="sum")
            tX, ty = self.tX, self.ty

            def torch_step() -> Any:
                topt.zero_grad()
                loss = crit(tm(tX), ty)
                loss.backward()
                topt.step()
                loss.item()  # the loss comes back to Python, as in nnx's Optim.step
                return loss

            self.torch_step = torch_step
            # sanity: the very first step computes the same loss in both libraries
            a = float(np.sum(nnx.to_numpy(self.nnx_step())))
            b = float(torch_step().detach().cpu())
            self.loss_check = abs(a - b) / max(abs(b), 1e-12)

    def time(self) -> dict[str, Any]:
        env, args = self.env, self.env.args
        fns = {"nnx": self.nnx_step}
        if self.graph_step is not None:
            fns["nnx_graph"] = self.graph_step
        if self.torch_step is not None:
            fns["torch"] = self.torch_step
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        env.sync()
        # steps per block: a block lasts about --block-ms for the slower library
        per_call = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            fn()
            env.sync()
            per_call[name] = (time.perf_counter() - t0) / 2
        k = max(1, math.ceil(args.block_ms / 1e3 / max(per_call.values())))
        samples: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        gc.collect()
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    fn = fns[name]
                    env.sync()
                    t0 = clock()
                    for _ in range(k):
                        fn()
                    env.sync()
                    samples[name].append((clock() - t0) / k)
        finally:
            if gc_was:
                gc.enable()
        out: dict[str, Any] = {"steps_per_block": k, "rounds": args.rounds}
        for name, s in samples.items():
            med = statistics.median(s)
            q = statistics.quantiles(s, n=4) if len(s) >= 2 else [med, med, med]
            out[f"{name}_ms"] = med * 1e3
            out[f"{name}_iqr_ms"] = (q[2] - q[0]) * 1e3
        out["ratio"] = out["nnx_ms"] / out["torch_ms"] if "torch_ms" in out else None
        if "nnx_graph_ms" in out and "torch_ms" in out:
            out["graph_ratio"] = out["nnx_graph_ms"] / out["torch_ms"]
        out["loss_rel_diff"] = self.loss_check
        return out

    # -- memory ----------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        for _ in range(3):
            self.nnx_step()
            if self.torch_step is not None:
                self.torch_step()
        self.env.sync()
        out: dict[str, Any] = {}
        out["nnx_bytes"], out["nnx_method"] = self._nnx_peak()
        if self.torch_step is not None:
            out["torch_bytes"], out["torch_method"] = self._torch_peak()
        out["ratio"] = (
            out["nnx_bytes"] / out["torch_bytes"]
            if out.get("torch_bytes") and out.get("nnx_bytes") is not None
            else None
        )
        return out

    def _nnx_peak(self) -> tuple[int | None, str]:
        backend = self.env.nnx.get_backend()
        if backend in ("numpy", "array_api_strict"):
            import tracemalloc

            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                self.nnx_step()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return peak - base, "tracemalloc"
        if backend == "cupy":
            return _cupy_peak(self.env.cupy, self.nnx_step, self.env.sync), "cupy memory hook"
        if backend == "torch":
            dev = self.env.nnx.get_device()
            if dev is not None and getattr(dev, "type", "") == "cuda":
                return _torch_cuda_peak(self.env.torch, dev, self.nnx_step), "max_memory_allocated"
            return _torch_cpu_peak(self.env.torch, self.nnx_step), "torch profiler"
        return None, "n/a"

    def _torch_peak(self) -> tuple[int | None, str]:
        torch = self.env.torch
        if self.env.tdev.type == "cuda":
            return _torch_cuda_peak(torch, self.env.tdev, self.torch_step), "max_memory_allocated"
        return _torch_cpu_peak(torch, self.torch_step), "torch profiler"


def _torch_cpu_peak(torch: Any, fn: Callable[[], Any]) -> int:
    """Peak of the running sum of the profiler's CPU allocation/free events in one call."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        if e.device_type() != torch.autograd.DeviceType.CPU:
            continue
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _torch_cuda_peak(torch: Any, device: Any, fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _cupy_peak(cupy: Any, fn: Callable[[], Any], sync: Callable[[], None]) -> int:
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "NnxPeakHook"

        def __init__(self) -> None:
            self.current = self.peak = 0
            self.sizes: dict[int, int] = {}

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):  # noqa: ANN001
            self.sizes[mem_ptr] = mem_size
            self.current += mem_size
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):  # noqa: ANN001
            self.current -= self.sizes.pop(mem_ptr, mem_size)

    sync()
    hook = PeakHook()
    with hook:
        fn()
        sync()
    return hook.peak


# ---------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------
def run_sections(env: Env, log: Callable[[str], None]) -> list[dict[str, Any]]:
    args = env.args
    rows: list[dict[str, Any]] = []

    def record(section: str, case: Case, **extra: Any) -> None:
        timing = case.time()
        row = {
            "section": section,
            "model": case.model,
            "batch": case.batch,
            "length": case.length,
            **timing,
            **extra,
        }
        rows.append(row)
        ratio = "" if row["ratio"] is None else f"  ratio {row['ratio']:.2f}"
        torch_ms = f"  torch {row['torch_ms']:8.3f} ms" if "torch_ms" in row else ""
        if "nnx_graph_ms" in row:
            torch_ms = f"  nnx graph {row['nnx_graph_ms']:8.3f} ms" + torch_ms
        log(
            f"  {section:6s} {case.model:12s} batch {case.batch:5d} length {case.length:5d}: "
            f"nnx {row['nnx_ms']:8.3f} ms{torch_ms}{ratio}"
        )
        if case.loss_check is not None and case.loss_check > 1e-3:
            log(f"  WARNING: first-step losses differ by {case.loss_check:.2e} (relative)")

    if "step" in args.sections:
        log("step: full training step, median per step")
        for model in args.models:
            for batch in step_batches(args, model):
                record("step", Case(env, model, batch))
    if "batch" in args.sections:
        log("batch: seed CNN, cost per sample vs batch size")
        for batch in args.sweep_batch_sizes:
            record("batch", Case(env, "seed_cnn", batch))
    if "length" in args.sections:
        log(f"length: seed CNN at batch {args.sweep_batch}, cost per sample vs input length")
        for length in args.sweep_lengths:
            record("length", Case(env, "seed_cnn", args.sweep_batch, length))
    if "memory" in args.sections:
        log("memory: peak bytes allocated during one step above what was live before it")
        for model in args.models:
            for batch in step_batches(args, model):
                case = Case(env, model, batch)
                row = {
                    "section": "memory",
                    "model": model,
                    "batch": batch,
                    "length": case.length,
                    **case.memory(),
                }
                rows.append(row)
                tb = row.get("torch_bytes")
                log(
                    f"  memory {model:12s} batch {batch:5d}: nnx {_mib(row['nnx_bytes'])} "
                    f"({row['nnx_method']})"
                    + ("" if tb is None else f"  torch {_mib(tb)} ({row['torch_method']})")
                )
    return rows


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


# ---------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------
def tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every section present."""

    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    out = []
    step = [r for r in rows if r["section"] == "step"]
    if any("nnx_graph_ms" in r for r in step):
        out.append(
            (
                "Training step with and without nnx's CUDA graph (median ms per step)",
                [
                    "model",
                    "batch",
                    "nnx ms",
                    "nnx graph ms",
                    "PyTorch ms",
                    "nnx/PyTorch",
                    "nnx graph/PyTorch",
                ],
                [
                    [
                        r["model"],
                        str(r["batch"]),
                        f(r["nnx_ms"], ".3f"),
                        f(r.get("nnx_graph_ms"), ".3f"),
                        f(r.get("torch_ms"), ".3f"),
                        f(r["ratio"], ".2f"),
                        f(r.get("graph_ratio"), ".2f"),
                    ]
                    for r in step
                ],
            )
        )
    elif step:
        out.append(
            (
                "Training step (median ms per step)",
                ["model", "batch", "nnx ms", "PyTorch ms", "nnx/PyTorch"],
                [
                    [
                        r["model"],
                        str(r["batch"]),
                        f(r["nnx_ms"], ".3f"),
                        f(r.get("torch_ms"), ".3f"),
                        f(r["ratio"], ".2f"),
                    ]
                    for r in step
                ],
            )
        )
    for section, key, title in (
        ("batch", "batch", "Seed CNN: cost per sample vs batch size (µs per sample)"),
        ("length", "length", "Seed CNN: cost per sample vs input length (µs per sample)"),
    ):
        sel = [r for r in rows if r["section"] == section]
        if not sel:
            continue
        body = []
        for r in sel:
            n = r["batch"]
            body.append(
                [
                    str(r[key]),
                    str(r["batch"]) if section == "length" else str(r["length"]),
                    f(r["nnx_ms"] * 1e3 / n, ".2f"),
                    f(r["torch_ms"] * 1e3 / n if "torch_ms" in r else None, ".2f"),
                    f(r["ratio"], ".2f"),
                ]
            )
        other = "batch" if section == "length" else "length"
        out.append((title, [key, other, "nnx µs/sample", "PyTorch µs/sample", "nnx/PyTorch"], body))
    mem = [r for r in rows if r["section"] == "memory"]
    if mem:
        out.append(
            (
                "Peak memory allocated during one step (MiB)",
                ["model", "batch", "nnx MiB", "PyTorch MiB", "nnx/PyTorch"],
                [
                    [
                        r["model"],
                        str(r["batch"]),
                        f(None if r["nnx_bytes"] is None else r["nnx_bytes"] / 2**20, ".2f"),
                        f(
                            None if r.get("torch_bytes") is None else r["torch_bytes"] / 2**20,
                            ".2f",
                        ),
                        f(r["ratio"], ".2f"),
                    ]
                    for r in mem
                ],
            )
        )
    return out


def format_text(title: str, header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([title, line, fmt(header), line, *(fmt(r) for r in body), line])


def format_markdown(title: str, header: list[str], body: list[list[str]]) -> str:
    lines = [
        f"**{title}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def format_rst(title: str, header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    sep = " ".join("=" * w for w in widths)
    fmt = lambda cells: " ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join(
        [
            f".. table:: {title}",
            "",
            *("   " + s for s in [sep, fmt(header), sep, *(fmt(r) for r in body), sep]),
        ]
    )


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def machine_lines(meta: dict[str, Any]) -> list[str]:
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')} kernel, "
        f"{_threads(b.get('num_threads'))})"
        for b in meta.get("blas", [])
    )
    lines = [
        f"Machine: {meta['cpu']}, {meta['cpu_count']} cores, {meta['platform']}",
        f"Python {meta['python']}, NumPy {meta['numpy']}, nnx {meta['nnx']}"
        + (f" at {meta['git_commit']}" if meta.get("git_commit") else "")
        + f" (backend {meta['nnx_backend']}"
        + ("" if meta["nnx_device"] in ("None", "cpu") else f", device {meta['nnx_device']}")
        + f"), float32, {_threads(meta['threads'])}, {meta['clock']} clock",
    ]
    if blas:
        lines.append(f"NumPy BLAS: {blas}")
    if meta.get("load_average_at_start"):
        lines.append(
            "Load average (1, 5, 15 min) at start: "
            + ", ".join(str(v) for v in meta["load_average_at_start"])
            + (
                "; at end: " + ", ".join(str(v) for v in meta["load_average_at_end"])
                if meta.get("load_average_at_end")
                else ""
            )
        )
    if meta.get("openblas_env_removed"):
        lines.append(
            "OPENBLAS env removed for this run (was "
            + ", ".join(f"{k}={v}" for k, v in meta["openblas_env_removed"].items())
            + ")"
        )
    if meta.get("openblas_env_kept"):
        lines.append(
            "OPENBLAS env kept: "
            + ", ".join(f"{k}={v}" for k, v in meta["openblas_env_kept"].items())
        )
    if "torch" in meta:
        lines.append(
            f"PyTorch {meta['torch']} on {meta['torch_device']}, {_threads(meta['torch_threads'])}"
            + (f", CUDA {meta['torch_cuda']}, {meta['torch_gpu']}" if "torch_gpu" in meta else "")
        )
    if "gpu" in meta:
        lines.append(
            f"CuPy {meta['cupy']} on {meta['gpu']} (driver {meta['cuda_driver']}, "
            f"runtime {meta['cuda_runtime']})"
        )
    return lines


# ---------------------------------------------------------------------------------
# regression guard
# ---------------------------------------------------------------------------------
def _key(r: dict[str, Any]) -> tuple:
    return (r["section"], r["model"], r["batch"], r["length"])


def compare(
    old_path: Path, rows: list[dict[str, Any]], tolerance: float, meta: dict[str, Any]
) -> list[str]:
    """Lines describing every ratio worse than in ``old_path`` by more than ``tolerance``."""
    old = json.loads(old_path.read_text())
    old_rows = {_key(r): r for r in old.get("results", [])}
    worse, checked = [], 0
    notes = []
    old_meta = old.get("meta", {})
    for field in ("threads", "clock", "nnx_backend", "nnx_device", "torch_device", "cpu"):
        if field in old_meta and field in meta and old_meta[field] != meta[field]:
            notes.append(
                f"note: {field} differs ({old_meta[field]!r} in {old_path.name}, "
                f"{meta[field]!r} now): ratios may not be comparable"
            )
    for r in rows:
        o = old_rows.get(_key(r))
        if o is None or o.get("ratio") is None or r.get("ratio") is None:
            continue
        checked += 1
        if r["ratio"] > o["ratio"] * (1 + tolerance):
            worse.append(
                f"WORSE  {r['section']:6s} {r['model']:12s} batch {r['batch']:5d} "
                f"length {r['length']:5d}: nnx/PyTorch {o['ratio']:.2f} -> {r['ratio']:.2f} "
                f"(+{(r['ratio'] / o['ratio'] - 1) * 100:.0f}%)"
            )
    summary = (
        f"compare with {old_path}: {checked} ratios compared, {len(worse)} worse by more "
        f"than {tolerance:.0%}"
    )
    return [summary, *notes, *worse]


# ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.keep_openblas_env:
        maybe_reexec_without_openblas_env(argv)
    env = Env(args)
    meta = env.describe()

    def log(msg: str) -> None:
        print(msg, flush=True)

    for line in machine_lines(meta):
        log(line)
    rows = run_sections(env, log)
    out_tables = tables(rows)
    print()
    for t in out_tables:
        print(format_text(*t))
        print()
    meta["load_average_at_end"] = _loadavg()
    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"meta": meta, "results": rows}
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=1) + "\n")
        log(f"results written to {args.save}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(f"- {x}" for x in machine_lines(meta)) + "\n\n"
        text += "\n\n".join(format_markdown(*t) for t in out_tables) + "\n"
        args.markdown.write_text(text)
        log(f"Markdown tables written to {args.markdown}")
    if args.rst:
        args.rst.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(f"- {x}" for x in machine_lines(meta)) + "\n\n"
        text += "\n\n".join(format_rst(*t) for t in out_tables) + "\n"
        args.rst.write_text(text)
        log(f"reStructuredText tables written to {args.rst}")
    status = 0
    if args.compare:
        lines = compare(args.compare, rows, args.tolerance, meta)
        print("\n".join(lines))
        if any(line.startswith("WORSE") for line in lines) and args.fail_on_regression:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
