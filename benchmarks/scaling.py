#!/usr/bin/env python
"""Data-parallel scaling: samples per second of 1 and N MPI ranks, one thread each.

One command runs the whole comparison (it launches ``mpiexec`` itself)::

    python benchmarks/scaling.py                       # seed CNN, global batch 256, 1 and 2 ranks
    python benchmarks/scaling.py --ranks 1,2,4 --rounds 7
    python benchmarks/scaling.py --save benchmarks/results/scaling-cpu.json \\
        --markdown benchmarks/results/scaling-cpu.md --rst benchmarks/results/scaling-cpu.rst

Every configuration trains the same model on the same synthetic data with
``nnx.Optim.SGD`` (plain SGD, float32, NumPy backend): 1 rank is the plain
one-process run (``comm=None``), N ranks run ``mpiexec -n N`` with ``comm=`` (each rank
takes its contiguous share of every global batch of ``--batch``, one packed allreduce
of the gradients per step). Every rank is limited to one BLAS thread
(``OMP_NUM_THREADS=1`` ...), so N ranks use N cores. Each rank times ``--rounds``
epochs of ``--steps`` global batches after one warm-up epoch. Each configuration is
launched ``--repeats`` times, the configurations taking turns (1, 2, 1, 2, ...), so that
a slow or fast spell of the machine falls on all of them; the figure is the median
epoch of rank 0 over all launches, as samples per second (each launch's own figure is
kept in the JSON). The allreduce is timed inside the epochs
(``allreduce incl. wait``: the call, including the wait for the slower rank) and alone
after training (``allreduce alone``: the ranks meet at a barrier, then make the step's
call on the same gradients: ``allreduce_sum(..., inplace=False, reuse=True)``).

For every N > 1 the table also has the row "N processes, no MPI" (unless
``--no-ceiling``): N plain processes started together, each training on one rank's share
of every global batch, with no communication at all, an epoch counting as long as the
slowest process's. It is what N ranks could reach on this machine if the allreduce and
the waits for each other cost nothing: cores that share caches, memory bandwidth and
clock slow each other down before any message is sent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="seed_cnn", help="a name of nnx.models")
    p.add_argument("--length", type=int, default=256, help="input length (1 channel)")
    p.add_argument("--batch", type=int, default=256, help="global batch size")
    p.add_argument("--steps", type=int, default=20, help="global batches per timed epoch")
    p.add_argument("--rounds", type=int, default=5, help="timed epochs")
    p.add_argument("--ranks", default="1,2", help="comma-separated numbers of ranks")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="launches of each configuration, taken in turn (1, 2, 1, 2, ...)",
    )
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the N independent processes without communication (the machine's bound)",
    )
    p.add_argument("--save", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write the table as Markdown")
    p.add_argument("--rst", type=Path, default=None, help="write the table as reStructuredText")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--barrier-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--barrier-count", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- one configuration (runs on every rank) ---------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import numpy as np

    import nnx

    comm = nnx.distributed.init() if args.distributed else None
    rank = 0 if comm is None else comm.rank
    nnx.manual_seed(0)
    net = nnx.models.build(args.model, args.length, 1, 10)
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    X = rng.normal(size=(n, args.length, 1)).astype(np.float32)
    y = rng.integers(0, 10, n)
    waits: list[float] = []
    if comm is not None:  # time every allreduce of the training (including the wait)
        plain = comm.allreduce_sum

        def timed(arrays: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return plain(arrays, **kwargs)
            finally:
                waits.append(time.perf_counter() - t0)

        comm.allreduce_sum = timed  # type: ignore[method-assign]
    optim = nnx.Optim(net, nnx.CELogSoftmax(), eps=1e-4, comm=comm)
    optim.SGD(X, y, args.batch, 1, shuffle=True, progress=False)  # warm-up
    if args.barrier_dir is not None:  # independent processes start timing together
        file_barrier(args.barrier_dir, args.barrier_count)
    epochs, fractions = [], []
    for r in range(args.rounds):
        if comm is not None:
            comm.barrier()
        waits.clear()
        t0 = time.perf_counter()
        optim.SGD(X, y, args.batch, 1, seed=r, progress=False)
        seconds = time.perf_counter() - t0
        epochs.append(seconds)
        fractions.append(sum(waits) / seconds)
    alone = []
    if comm is not None:
        comm.allreduce_sum = plain  # type: ignore[method-assign]
        # the step's call: the bound gradients and the two statistics, kept buffers
        grads = [g for _, g in net.named_gradients()] + [np.zeros(2, dtype=np.float32)]
        for _ in range(20):
            comm.barrier()
            t0 = time.perf_counter()
            grads = comm.allreduce_sum(grads, inplace=False, reuse=True)
            alone.append(time.perf_counter() - t0)
    if rank == 0:
        result = {
            "ranks": 1 if comm is None else comm.size,
            "epoch_s": epochs,
            "fractions": fractions if comm is not None else [],
            "alone_s": alone,
            "gradient_mib": sum(4 * int(np.prod(p.shape)) for p in net.parameters()) / 2**20,
        }
        print("RESULT " + json.dumps(result), flush=True)


def file_barrier(folder: Path, count: int, timeout: float = 300.0) -> None:
    """Wait until ``count`` processes have reached this point (one file each)."""
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready-*"))) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"scaling.py: the other processes did not start within {timeout} s")
        time.sleep(1e-3)


# -- the driver -----------------------------------------------------------------------------
def mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("scaling.py: mpiexec not found (pip install mpi4py mpich)")
    return found


def worker_command(args: argparse.Namespace, batch: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one worker process (one BLAS thread)."""
    env = dict(os.environ)
    env.update({v: "1" for v in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    own = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--model",
        args.model,
        "--length",
        str(args.length),
        "--batch",
        str(batch),
        "--steps",
        str(args.steps),
        "--rounds",
        str(args.rounds),
    ]
    return own, env


def result_of(cmd: list[str], returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if returncode != 0 or not lines:
        raise SystemExit(f"scaling.py: {' '.join(cmd)} failed ({returncode}):\n{stdout}\n{stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def run_config(args: argparse.Namespace, ranks: int) -> dict[str, Any]:
    """1 rank (a plain process) or ``ranks`` MPI ranks sharing each global batch."""
    own, env = worker_command(args, args.batch)
    cmd = own if ranks == 1 else [mpiexec(), "-n", str(ranks), *own, "--distributed"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    return result_of(cmd, proc.returncode, proc.stdout, proc.stderr)


def run_independent(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """``n`` plain processes at the same time, each training on one rank's share of the
    global batch, with no communication at all: what ``n`` ranks could reach on this
    machine if the allreduce and the waits cost nothing. Each epoch counts as long as
    the slowest process's (ranks in lockstep would wait for it)."""
    share = -(-args.batch // n)
    own, env = worker_command(args, share)
    with tempfile.TemporaryDirectory() as folder:
        cmd = [*own, "--barrier-dir", folder, "--barrier-count", str(n)]
        procs = [
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            for _ in range(n)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            results.append(result_of(cmd, proc.returncode, out, err))
    per_process = [r["epoch_s"] for r in results]
    return {
        "ranks": n,
        "epoch_s": [max(rounds) for rounds in zip(*per_process, strict=True)],
        "process_epoch_s": per_process,
        "fractions": [],
        "alone_s": [],
        "gradient_mib": results[0]["gradient_mib"],
    }


def summarize(
    args: argparse.Namespace, ranks: int, launches: list[dict[str, Any]], communication: bool = True
) -> dict:
    """One configuration's row: medians over the epochs of all its launches."""
    epochs = [e for r in launches for e in r["epoch_s"]]
    fractions = [f for r in launches for f in r["fractions"]]
    alone = [a for r in launches for a in r["alone_s"]]
    median = statistics.median(epochs)
    return {
        "ranks": ranks,
        "communication": communication,
        "samples_per_s": args.batch * args.steps / median,
        "step_ms": 1e3 * median / args.steps,
        "epoch_s": epochs,
        "launch_samples_per_s": [
            args.batch * args.steps / statistics.median(r["epoch_s"]) for r in launches
        ],
        "allreduce_fraction": statistics.median(fractions) if fractions else 0.0,
        "allreduce_alone_ms": 1e3 * statistics.median(alone) if alone else 0.0,
        "gradient_mib": launches[0]["gradient_mib"],
    }


def machine() -> dict[str, Any]:
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from mpi4py import MPI

        mpi = " ".join(MPI.Get_library_version().splitlines()[0].split())
    except ImportError:
        mpi = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mpi": mpi,
        "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def table(
    args: argparse.Namespace, rows: list[dict[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    base = rows[0]["samples_per_s"]
    header = [
        "ranks",
        "samples/s",
        "ms per global step",
        "speed-up",
        "allreduce incl. wait",
        "allreduce alone ms",
    ]
    body = []
    for r in rows:
        reduced = r["ranks"] > 1 and r["communication"]
        label = str(r["ranks"]) if r["communication"] else f"{r['ranks']} processes, no MPI"
        body.append(
            [
                label,
                f"{r['samples_per_s']:.0f}",
                f"{r['step_ms']:.2f}",
                f"{r['samples_per_s'] / base:.2f}x",
                f"{100 * r['allreduce_fraction']:.1f} %" if reduced else "-",
                f"{r['allreduce_alone_ms']:.2f}" if reduced else "-",
            ]
        )
    return header, body


def render(
    header: list[str], body: list[list[str]], kind: str, title: str, notes: list[str]
) -> str:
    if kind == "markdown":
        lines = [f"**{title}**", ""] + [f"- {n}" for n in notes] + [""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    rule = "   " + " ".join("=" * w for w in widths)
    fmt = "   " + " ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"- {n}" for n in notes] + ["", f".. table:: {title}", ""]
    lines += [rule, fmt.format(*header), rule]
    lines += [fmt.format(*row) for row in body]
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    ranks = [int(r) for r in args.ranks.split(",")]
    if ranks[0] != 1:
        ranks.insert(0, 1)
    info = machine()
    # (ranks, communication): the ranks of the benchmark, then for each N > 1 the N
    # independent processes without MPI that bound what N ranks can reach here
    configs = [(n, True) for n in ranks]
    if not args.no_ceiling:
        configs += [(n, False) for n in ranks if n > 1]
    # The configurations take turns, so that a slow or fast spell of the machine
    # falls on all of them instead of on one.
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {c: [] for c in configs}
    for repeat in range(args.repeats):
        for n, communication in configs:
            what = f"{n} rank(s)" if communication else f"{n} processes without MPI"
            print(f"scaling: {what}, launch {repeat + 1} of {args.repeats} ...", flush=True)
            run = run_config(args, n) if communication else run_independent(args, n)
            runs[n, communication].append(run)
    rows = [summarize(args, n, runs[n, c], c) for n, c in configs]
    info["load_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    title = (
        f"{args.model} (length {args.length}), global batch {args.batch}, plain SGD, float32, "
        f"1 thread per rank"
    )
    load = info["load"]
    notes = [
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, "
        f"NumPy {info['numpy']}; {info['mpi']}",
        f"Load average (1, 5, 15 min) at start: {', '.join(f'{v:.2f}' for v in load or [])}; "
        f"at end: {', '.join(f'{v:.2f}' for v in info['load_end'] or [])}",
        f"Median of {args.repeats} x {args.rounds} epochs of {args.steps} global batches "
        f"({args.repeats} launches per configuration, taken in turn); gradients "
        f"{rows[0]['gradient_mib']:.2f} MiB per allreduce",
    ]
    if not args.no_ceiling and len(ranks) > 1:
        notes.append(
            "N processes, no MPI: N plain processes at the same time, each on one rank's "
            "share of every batch, no communication (an epoch lasts as long as the slowest "
            "process's): the bound of N ranks on this machine"
        )
    header, body = table(args, rows)
    print(render(header, body, "markdown", title, notes))
    if args.save:
        args.save.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"save": None, "markdown": None, "rst": None},
                    "machine": info,
                    "rows": rows,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    if args.markdown:
        args.markdown.write_text(render(header, body, "markdown", title, notes))
    if args.rst:
        args.rst.write_text(render(header, body, "rst", title, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
