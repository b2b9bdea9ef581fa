"""Test matrix, lint, docs and benchmarks for nnx.

``nox`` runs every session that can run on a CPU-only machine: ``lint``, the five
``tests(backend=...)`` sessions (the CuPy one skips, with a message, when there is no
NVIDIA GPU), ``distributed`` (2 MPI ranks, mpich from PyPI) and ``docs``. ``bench`` runs
only when asked for.

Select sessions by name or by tag::

    nox -s "tests(backend='numpy')"   # one backend
    nox -t cpu                       # numpy, array_api_strict, torch, jax
    nox -t gpu                       # cupy (fails instead of skipping if NNX_REQUIRE_GPU=1)
    nox -s docs
    nox -s distributed               # mpiexec -n 2 python -m pytest -m mpi, numpy and torch
    nox -s bench -- --quick          # arguments after -- go to benchmarks/run.py
    nox -s "tests(backend='torch')" -- -k conv -x   # ... or to pytest

Environment variables:

``NNX_REQUIRE_GPU=1``
    On a machine that must have a GPU: the CuPy session fails instead of skipping when
    no NVIDIA GPU is found, and the test suite fails instead of skipping CuPy tests.
``NNX_JAX_TEST_CACHE``
    The JAX session keeps the operations XLA compiled in JAX's persistent compilation
    cache, ``~/.cache/nnx/jax-tests`` (``$XDG_CACHE_HOME/nnx/jax-tests``); ``off`` turns
    that off, a path moves it. A ``JAX_COMPILATION_CACHE_DIR`` you set is used instead.
``NNX_TORCH_REQUIREMENT``
    What ``pip install`` gets for PyTorch (default ``torch==2.13.0``; the tests compare
    every layer against PyTorch autograd). Several words are split like a shell, e.g.
    ``NNX_TORCH_REQUIREMENT="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"``
    for a CUDA build on a GPU machine.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "distributed", "docs"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
# uv builds the session environments (installed with nox by `pip install "nox[uv]"`):
# installs come from uv's cache as hard links, so the sessions share one copy of PyTorch
# on disk. Without uv, nox falls back to virtualenv + pip.
nox.options.default_venv_backend = "uv|virtualenv"

ROOT = Path(__file__).parent
LINT_PATHS = ("nnx", "tests", "benchmarks", "examples", "docs", "noxfile.py")
DEFAULT_TORCH = "torch==2.13.0"
NO_TESTS_COLLECTED = 5
# pytest-xdist: one worker per core (at most 4: the GPU session shares one device).
# `-- -n 0` after the session name runs the tests in one process.
PARALLEL = ("-n", "auto", "--maxprocesses", "4")

# JAX runs eagerly: it compiles every operation anew for each new shape and dtype, and
# the tests draw many shapes, so compiling is most of the JAX session's time. These XLA
# options compile faster (the CPU's older IR emitters, no LLVM optimisation passes); the
# operations, the dtypes and the tests are the same.
JAX_FAST_COMPILE_XLA_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_parallel_codegen_split_count=1",
)

# ... and the compiled operations are kept on disk between runs (JAX's persistent
# compilation cache, keyed by the computation, jax/jaxlib versions and XLA options):
# a later run loads them instead of compiling. NNX_JAX_TEST_CACHE=off turns it off, a
# path moves it; JAX_COMPILATION_CACHE_DIR set by the user wins.
JAX_TEST_CACHE_VARIABLE = "NNX_JAX_TEST_CACHE"

BACKENDS = [
    nox.param("numpy", tags=["numpy", "cpu"]),
    nox.param("array_api_strict", tags=["array_api_strict", "cpu"]),
    nox.param("torch", tags=["torch", "cpu"]),
    nox.param("jax", tags=["jax", "cpu"]),
    nox.param("cupy", tags=["cupy", "gpu"]),
]


# uv does not read pip's configuration. A machine whose pip is set up with a wheel folder,
# a mirror or a constraints file gets the same packages from uv: those settings are
# handed to uv through its environment variables, unless UV_* ones are already set.
_PIP_TO_UV = {
    "index-url": ("UV_INDEX_URL", " "),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "constraint": ("UV_CONSTRAINT", " "),
}


def _pip_settings() -> dict[str, list[str]]:
    """pip's index settings: its config files (``pip config list``), then PIP_* variables."""
    found: dict[str, list[str]] = {}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=dict(os.environ),
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in _PIP_TO_UV and not key.startswith(":env:"):
            found[name] = shlex.split(value.strip().strip("'\""))
    for name in _PIP_TO_UV:
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            found[name] = env.split()
    return found


def _hand_pip_settings_to_uv() -> None:
    if any(os.environ.get(var) for var, _ in _PIP_TO_UV.values()):
        return
    settings = _pip_settings()
    for name, values in settings.items():
        var, sep = _PIP_TO_UV[name]
        os.environ[var] = sep.join(values)
    if "extra-index-url" in settings or "find-links" in settings:
        # pip picks the best version over all indexes; uv's default stops at the first
        # index that has the package
        os.environ.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")


_hand_pip_settings_to_uv()


def _torch_requirement() -> list[str]:
    raw = os.environ.get("NNX_TORCH_REQUIREMENT", "").strip()
    return shlex.split(raw) if raw else [DEFAULT_TORCH]


def _require_gpu() -> bool:
    return os.environ.get("NNX_REQUIRE_GPU", "").strip() == "1"


def _nvidia_gpu() -> str | None:
    """Describe the NVIDIA GPU of this machine, or return None (CuPy is not imported)."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
            if gpus:
                return gpus[0]
    if Path("/dev/nvidia0").exists():
        return "/dev/nvidia0"
    return None


def _fast_compile_xla_flags(session: nox.Session) -> str | None:
    """XLA_FLAGS for the JAX tests: the user's own, after the fast-compile options where
    the installed jaxlib knows them (XLA aborts on an unknown flag), else None."""
    flags = " ".join(JAX_FAST_COMPILE_XLA_FLAGS)
    probe = "import jax.numpy as jnp; jnp.ones(2).block_until_ready()"
    try:
        session.run("python", "-c", probe, env={"XLA_FLAGS": flags}, silent=True)
    except nox.command.CommandFailed:
        session.log("this jaxlib does not take the fast-compile XLA options: not used")
        return None
    return " ".join(filter(None, [flags, os.environ.get("XLA_FLAGS", "")]))


def _jax_compile_cache_env() -> dict[str, str]:
    """JAX's persistent compilation cache for the JAX tests: every compiled operation is
    kept (no minimum compile time or size), in the user's cache folder."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    raw = os.environ.get(JAX_TEST_CACHE_VARIABLE, "").strip()
    if raw.lower() in {"off", "0", "false", "no"}:
        return {}
    if raw:
        folder = Path(raw).expanduser()
    else:  # the folder nnx.datasets caches into, as nnx.datasets.cache_dir finds it
        try:
            from platformdirs import user_cache_dir  # nox's virtualenv depends on it
        except ImportError:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnx"
        else:
            base = Path(user_cache_dir("nnx", appauthor=False))
        folder = base / "jax-tests"
    return {
        "JAX_COMPILATION_CACHE_DIR": str(folder),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def _pytest_success_codes(session: nox.Session) -> list[int]:
    # pytest exits 5 when it collects nothing. With no extra arguments the whole suite
    # runs, so an empty run means something is broken; with a user's selection (-k, -m,
    # a path) one backend may legitimately have nothing to run.
    return [0, NO_TESTS_COLLECTED] if session.posargs else [0]


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite on one backend (NNX_TEST_BACKENDS=<backend>)."""
    env = {"NNX_TEST_BACKENDS": backend}
    extras = "tests"
    if backend == "cupy":
        gpu = _nvidia_gpu()
        if gpu is None:
            msg = "no NVIDIA GPU found (no nvidia-smi GPU, no /dev/nvidia0): CuPy not tested"
            if _require_gpu():
                session.error(f"NNX_REQUIRE_GPU=1 but {msg}")
            session.skip(msg)
        session.log(f"GPU: {gpu}")
        extras = "tests,cupy"
        # A GPU is present: the CuPy tests must run, not skip.
        env["NNX_REQUIRE_GPU"] = "1"
    elif backend == "jax":
        extras = "tests,jax"
    elif backend == "numpy":
        # CuPy imports without a GPU: the numpy session checks nnx's "no usable GPU"
        # error and CuPy's as_strided signature (the CuPy tests themselves skip); JAX
        # for the extending guide's backend example, which the doctests run.
        extras = "tests,cupy,jax"
    session.install(f".[{extras}]", *_torch_requirement())
    if backend == "jax":
        xla_flags = _fast_compile_xla_flags(session)
        if xla_flags:
            env["XLA_FLAGS"] = xla_flags
        cache = _jax_compile_cache_env()
        if cache:
            session.log(f"JAX compilation cache: {cache['JAX_COMPILATION_CACHE_DIR']}")
            env.update(cache)
    # Nothing may rely on assert statements: the numpy session runs the suite under
    # python -O (pytest still rewrites the tests' own asserts, and those of helpers.py,
    # so they still check); the other backends run it with asserts on.
    python = ["python", "-O"] if backend == "numpy" else ["python"]
    # tests marked `once` do not depend on the backend: the numpy session runs them
    once = [] if backend == "numpy" else ["-m", "not once"]
    session.run(
        *python,
        "-m",
        "pytest",
        *PARALLEL,
        *once,
        *session.posargs,
        env=env,
        success_codes=_pytest_success_codes(session),
    )
    if backend == "numpy" and session.posargs:
        session.log("pytest arguments given: the doctests are skipped")
    elif backend == "numpy":
        # Docstring examples of the installed package, and the examples of the guides.
        session.run("pytest", "--doctest-modules", "--pyargs", "nnx", "-q")
        session.run("pytest", "--doctest-glob=*.rst", "-q", "docs")


@nox.session(tags=["cpu", "mpi"])
def distributed(session: nox.Session) -> None:
    """Data-parallel training on 2 MPI ranks (mpi4py + mpich from PyPI), numpy and torch.

    First the tests that launch ``mpiexec -n 2`` jobs themselves (a rank that raises,
    hangs or is killed), then ``mpiexec -n 2 python -m pytest -m mpi`` on both backends:
    every rank runs the ``mpi`` tests (parameters equal to the one-process run), once
    with the gradients summed in shared memory (the default on one machine) and once
    with ``MPI_Allreduce`` (``NNX_MPI_SHARED_MEMORY=0``, as on several machines).
    Arguments after ``--`` go to every pytest run.
    """
    if sys.platform == "win32":
        session.skip("mpich from PyPI has no Windows wheels (use MS-MPI and mpi4py by hand)")
    session.install(".[tests,mpi]", *_torch_requirement())
    launcher = shutil.which("mpiexec", path=session.bin) if session.bin else None
    launcher = launcher or shutil.which("mpiexec")
    if launcher is None:
        session.error(
            "mpiexec not found after installing mpich from PyPI (session bin: "
            f"{session.bin}); install an MPI library that provides mpiexec"
        )
    session.log(f"launcher: {launcher}")
    files = sorted(glob.glob("tests/test_distributed*.py"))
    codes = _pytest_success_codes(session)
    session.run("pytest", "-q", "-m", "not mpi", *files, *session.posargs, success_codes=codes)
    # -p no:cacheprovider: two pytest processes would race on .pytest_cache
    for shared_memory in ("1", "0"):
        session.run(
            launcher,
            "-n",
            "2",
            "python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "mpi",
            *(session.posargs or files),
            env={
                "NNX_TEST_BACKENDS": "numpy,torch",
                "OMP_NUM_THREADS": "1",
                "NNX_MPI_SHARED_MEMORY": shared_memory,
            },
            success_codes=codes,
        )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def docs(session: nox.Session) -> None:
    """Generate the figures (docs/scripts/*.py), then build the HTML with warnings as errors."""
    session.install(".[docs]", "pytest")
    # Every public name documented, every layer's math present, docstrings that
    # napoleon parses (this part of the test needs Sphinx, hence here too).
    session.run("pytest", "-q", "tests/test_docs.py")
    for script in sorted(glob.glob("docs/scripts/*.py")):
        session.run("python", script)
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-E",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )
    # The built pages load nothing from the network (MathJax is served from _static).
    session.run(
        "pytest",
        "-q",
        "tests/test_docs.py",
        "-k",
        "network",
        env={"NNX_DOCS_HTML": str(ROOT / "docs" / "_build" / "html")},
    )


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (not run by plain ``nox``): ``nox -s bench -- <args of benchmarks/run.py>``."""
    session.install(".", *_torch_requirement())
    session.run("python", "benchmarks/run.py", *session.posargs)
