"""Hostile model files: each one is refused with ModelFileError, fast and in bounded memory.

The files (tests/hostile_files.py) are the reported attacks: a 4 GB parameter deflated
into a small file, a header padded with spaces, a 3.6 TiB declared array, 400k modules,
containers nested 500 and 5000 deep, JSON nested 100k deep, ``Infinity`` as a layer
size, a duplicated ``__nnx__`` entry, a FIFO as the path. Each must be refused in well
under a second and under 100 MB, measured in process (tracemalloc, which sees NumPy's
allocations) and in a fresh subprocess (growth of the peak RSS).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import hostile_files
import numpy as np
import pytest

import nnx
from nnx import serialization
from nnx.serialization import ModelFileError

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 1.0
LIMIT_BYTES = 100 << 20


@pytest.mark.parametrize("name", list(hostile_files.MAKERS))
def test_hostile_file_refused_fast_in_bounded_memory(tmp_path, name):
    path = hostile_files.MAKERS[name](tmp_path, small=True)
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(ModelFileError) as info:
            nnx.load(path)
        seconds = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert re.search(r"nnx\.load: '.*" + re.escape(path.name) + "'", message), message
    assert re.search(hostile_files.EXPECTED[name], message), message
    assert seconds < LIMIT_S, f"{name}: {seconds:.2f} s"
    assert peak < LIMIT_BYTES, f"{name}: {peak / 2**20:.0f} MiB"


def test_hostile_files_rss_in_a_fresh_process(tmp_path):
    hostile_files.main(["make", str(tmp_path)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("hostile_files.py")), "probe", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    results = json.loads(out.stdout)
    assert len(results) == len(hostile_files.MAKERS)
    for name, r in results.items():
        assert r["outcome"].startswith("ModelFileError"), (name, r)
        assert r["seconds"] < LIMIT_S, (name, r)
        assert r["rss_kb"] * 1024 < LIMIT_BYTES, (name, r)


def test_max_bytes_is_overridable(tmp_path):
    net = nnx.Sequential(nnx.Linear(20, 30))
    path = tmp_path / "m.npz"
    nnx.save(net, path)
    with pytest.raises(ModelFileError, match=r"declares 2520 bytes.*max_bytes=1000"):
        nnx.load(path, max_bytes=1000)
    loaded = nnx.load(path, max_bytes=2520)
    np.testing.assert_array_equal(loaded.state_dict()["0.weight"], net.state_dict()["0.weight"])


def test_compressed_genuine_file_still_loads(tmp_path):
    """np.savez_compressed of a saved model (zero biases compress ~1000x) is accepted."""
    net = nnx.Sequential(nnx.Linear(50, 400), nnx.ReLU(), nnx.Linear(400, 10))
    path = tmp_path / "m.npz"
    nnx.save(net, path)
    with np.load(path) as archive:
        entries = {k: archive[k] for k in archive.files}
    np.savez_compressed(tmp_path / "c.npz", **entries)
    loaded = nnx.load(tmp_path / "c.npz")
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)


def test_big_endian_and_fortran_arrays_load(tmp_path):
    net = nnx.Sequential(nnx.Linear(3, 4))
    path = tmp_path / "m.npz"
    nnx.save(net, path)
    with np.load(path) as archive:
        entries = {k: archive[k] for k in archive.files}
    w = entries["param/0.weight"]
    entries["param/0.weight"] = np.asfortranarray(w.astype(">f4"))
    np.savez(tmp_path / "b.npz", **entries)
    loaded = nnx.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(loaded.state_dict()["0.weight"], w)
    assert loaded.state_dict()["0.weight"].dtype == np.float32


def test_directory_and_missing_paths(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory|not a regular file"):
        nnx.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        nnx.load(tmp_path / "none.npz")


def test_limits_are_documented_module_constants():
    for name in ("MAX_BYTES", "MAX_HEADER_BYTES", "MAX_DEPTH", "MAX_MODULES", "MAX_RATIO"):
        assert name in serialization.__all__
        assert name in (serialization.__doc__ or "")


def test_cli_evaluate_on_a_hostile_file_is_a_clean_error(tmp_path, capsys):
    from nnx import cli

    path = hostile_files.infinite_size(tmp_path)
    rc = cli.main(["evaluate", str(path), "--dataset", "digits"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "not a finite number" in err and "Traceback" not in err
