"""The command line: ``nnx train`` / ``nnx evaluate`` / ``python -m nnx``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import cli

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[1]


def _pythonpath() -> str:
    """This checkout first, then whatever PYTHONPATH already holds (packages installed
    with ``pip --target``, as on the GPU check machine)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _train(tmp_path, backend, *extra):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--backend", backend]
    return out, cli.main([*argv, "--out", str(out), *extra])


def test_train_writes_history_curve_model_and_metrics(backend, tmp_path, capsys):
    out, code = _train(tmp_path, backend, "--seed", "3", "--optimizer", "momentum", "--lr", "0.01")
    assert code == 0
    stdout = capsys.readouterr().out
    assert "test accuracy: 0." in stdout and "epoch   3" in stdout  # one line per epoch, no bars
    assert sorted(p.name for p in out.iterdir()) == [
        "args.json",
        "history.csv",
        "learning_curve.png",
        "metrics.json",
        "model.npz",
    ]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"epoch", "loss_train", "loss_test", "score_train", "score_test"}
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == backend and metrics["optimizer"] == "momentum"
    assert metrics["lr"] == 0.01 and metrics["epochs"] == 3 and metrics["batch_size"] == 64
    # the saved model reproduces the reported accuracy
    _, _, Xt, yt = nnx.datasets.digits()
    with nnx.use_backend(backend):
        net = nnx.load(out / "model.npz")
        acc = nnx.Optim(net, nnx.CELogSoftmax()).score(Xt, yt)
    assert acc == pytest.approx(metrics["test_accuracy"])
    assert f"test accuracy: {acc:.4f}" in stdout


def test_same_seed_same_run(backend, tmp_path):
    results = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--quiet"]
        assert cli.main([*argv, "--backend", backend, "--seed", "5", "--out", str(out)]) == 0
        results.append((out / "history.csv").read_text())
    assert results[0] == results[1]


def test_evaluate_on_another_backend(backend, tmp_path, capsys):
    out, code = _train(tmp_path, backend, "--quiet")
    assert code == 0
    reported = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    capsys.readouterr()
    target = "array_api_strict" if backend != "array_api_strict" else "numpy"
    assert (
        cli.main(["evaluate", str(out / "model.npz"), "--backend", target, "--dtype", "float64"])
        == 0
    )
    assert f"test accuracy: {reported:.4f} on digits ({target}/float64)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["train", "--epochs", "0"], "--epochs must be positive"),
        (["train", "--lr", "-1"], "--lr must be positive"),
        (["train", "--val-size", "1.5"], "--val-size"),
        (["train", "--backend", "cupy"], "cupy"),
        (["evaluate", "missing.npz"], "no such file"),
        (["train", "--threads", "-1"], "--threads must be >= 0"),
    ],
)
def test_errors_exit_2_with_a_message(tmp_path, capsys, argv, text):
    if "cupy" in argv:
        try:
            nnx.backends.BACKENDS["cupy"].load()
            pytest.skip("a GPU is available here")
        except (ImportError, RuntimeError):
            pass
    os.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert text in capsys.readouterr().err


def test_limit_threads_restores_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with cli.limit_threads(1, torch=True):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--model", "resnet"])
    assert info.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


def test_python_dash_m_nnx(tmp_path):
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    help_ = subprocess.run(
        [sys.executable, "-m", "nnx", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    for option in (
        "--dataset",
        "--model",
        "--backend",
        "--dtype",
        "--optimizer",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--out",
    ):
        assert option in help_.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnx",
            "train",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("test accuracy: ")
    assert run.stderr == ""  # not a terminal: no progress bars in the log


def test_console_script_entry_point():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'nnx = "nnx.cli:main"' in text
    assert callable(cli.main)


@pytest.mark.slow
def test_digits_mlp_recipe_reaches_96_percent(tmp_path):
    out = tmp_path / "digits"
    assert (
        cli.main(["train", "--dataset", "digits", "--model", "mlp", "--quiet", "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.96
    assert np.isfinite(metrics["test_loss"])


@pytest.mark.parametrize(
    ("script", "args", "outputs"),
    [
        (
            "train_mnist1d_gpu.py",
            ["--model", "mlp", "--epochs", "2"],
            ["model.npz", "history.csv", "learning_curve.png"],
        ),
        (
            "autoencoder_digits.py",
            ["--epochs", "2"],
            ["model.npz", "reconstructions.png", "learning_curve.png"],
        ),
    ],
)
def test_examples_run_unchanged_on_cpu(tmp_path, script, args, outputs):
    """The GPU scripts pick the best backend ("auto"): NumPy on this machine."""
    pytest.importorskip("mnist1d")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    for name in outputs:
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_default_main_job_reaches_93_percent_on_mnist1d(tmp_path):
    """``nnx train`` with its defaults (deeper CNN, Adam, NumPy): about 10 s here."""
    pytest.importorskip("mnist1d")
    out = tmp_path / "main"
    assert cli.main(["train", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "cnn" and metrics["backend"] == "numpy"
    assert metrics["test_accuracy"] >= 0.93
    assert metrics["train_seconds"] < 120
