"""The repository's own promises: the README's commands, CI, nox's environments."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    install, nox = _readme_commands()[1].split(" && ")
    assert install == 'pip install "nox[uv]"' and nox == "nox"
    script = (ROOT / ".ci" / "run").read_text()
    steps = [line for line in script.splitlines() if line.startswith('"$PYTHON"')]
    assert steps == ['"$PYTHON" -m pip install -q "nox[uv]"', '"$PYTHON" -m nox "$@"']


@functools.cache
def _load_noxfile():
    spec = importlib.util.spec_from_file_location("nnx_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    saved = dict(os.environ)
    try:
        spec.loader.exec_module(module)  # sets UV_* variables: undone below
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return module


def _noxfile(monkeypatch):
    pytest.importorskip("nox")
    return _load_noxfile()


def test_nox_builds_environments_with_uv(monkeypatch):
    noxfile = _noxfile(monkeypatch)
    assert noxfile.nox.options.default_venv_backend.split("|")[0] == "uv"
    assert noxfile.nox.options.reuse_venv == "yes"


def test_pip_index_settings_are_handed_to_uv(monkeypatch, tmp_path):
    noxfile = _noxfile(monkeypatch)
    monkeypatch.setattr(os, "environ", {"PATH": os.environ.get("PATH", "")})
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no config files, only variables
    monkeypatch.setenv("PIP_FIND_LINKS", f"{tmp_path}/a {tmp_path}/b")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///x/simple")
    monkeypatch.setattr(noxfile.sys, "executable", sys.executable)
    noxfile._hand_pip_settings_to_uv()
    assert os.environ["UV_FIND_LINKS"] == f"{tmp_path}/a,{tmp_path}/b"
    assert os.environ["UV_EXTRA_INDEX_URL"] == "file:///x/simple"
    assert os.environ["UV_INDEX_STRATEGY"] == "unsafe-best-match"
    # settings the user gave uv are left alone
    monkeypatch.setattr(os, "environ", {"UV_FIND_LINKS": "mine", "PIP_FIND_LINKS": "/p"})
    noxfile._hand_pip_settings_to_uv()
    assert os.environ == {"UV_FIND_LINKS": "mine", "PIP_FIND_LINKS": "/p"}


def test_jax_compile_cache_follows_the_switch(monkeypatch, tmp_path):
    """The JAX session's persistent compile cache: in the user's cache folder by default,
    moved or turned off by NNX_JAX_TEST_CACHE, the user's own JAX setting left alone."""
    noxfile = _noxfile(monkeypatch)
    for var in ("JAX_COMPILATION_CACHE_DIR", "NNX_JAX_TEST_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    env = noxfile._jax_compile_cache_env()
    if sys.platform.startswith("linux"):
        assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xdg" / "nnx" / "jax-tests")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    monkeypatch.setenv("NNX_JAX_TEST_CACHE", str(tmp_path / "here"))
    assert noxfile._jax_compile_cache_env()["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "here")
    for off in ("off", "0", "no"):
        monkeypatch.setenv("NNX_JAX_TEST_CACHE", off)
        assert noxfile._jax_compile_cache_env() == {}
    monkeypatch.delenv("NNX_JAX_TEST_CACHE")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert noxfile._jax_compile_cache_env() == {}


@pytest.mark.once
def test_jax_fast_compile_flags_are_known_and_give_the_same_values(monkeypatch):
    # nox's JAX session compiles with these XLA options; XLA aborts on an unknown one
    noxfile = _noxfile(monkeypatch)
    pytest.importorskip("jax")
    code = (
        "import numpy as np, jax; jax.config.update('jax_enable_x64', True); "
        "import jax.numpy as jnp; x = jnp.asarray(np.linspace(-3, 3, 60).reshape(6, 10)); "
        "y = jnp.tanh(x @ x.T) + jnp.exp(-x[:, :6]) / (1 + jnp.abs(x[:, :6])); "
        "print(np.asarray(jnp.sum(y, axis=0)).tobytes().hex())"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    env["XLA_FLAGS"] = " ".join(noxfile.JAX_FAST_COMPILE_XLA_FLAGS)
    fast = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert default.returncode == 0, default.stderr
    assert fast.returncode == 0, fast.stderr
    got, want = (np.frombuffer(bytes.fromhex(p.stdout.strip())) for p in (fast, default))
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_tiny_steps_benchmark_reports_every_implementation(capsys):
    """``benchmarks/tiny_steps.py`` runs and prints µs per step for each implementation
    (one repeat: a smoke test, not a timing)."""
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location(
        "tiny_steps", Path(__file__).resolve().parents[1] / "benchmarks" / "tiny_steps.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line[:16].strip(): re.findall(r"\d+\.\d+", line[16:]) for line in lines[2:]}
    expected = {"nnx", "numpy by hand"} | (
        {"pytorch"} if importlib.util.find_spec("torch") else set()
    )
    assert set(rows) == expected
    for name, (seconds, per_step, *ratios) in rows.items():
        assert float(seconds) > 0 and float(per_step) > 0, name
        assert len(ratios) == ("pytorch" in rows), name  # vs pytorch, when it ran
