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
    # the validation names of the command line, not SGD_eval's loss_test/score_test
    assert list(rows[0]) == ["epoch", "loss", "val_loss", "acc", "val_acc"]
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


def test_version_and_a_default_on_every_help_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"nnx {nnx.__version__}"
    for command in ("train", "evaluate"):
        parser = cli._parser()
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in (action.help or "").lower(), (command, action.option_strings)


def test_evaluate_explains_folders_and_files_that_are_not_models(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    assert cli.main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a model file" in err and "Errno" not in err
    (run / "model.npz").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    assert cli.main(["evaluate", str(run)]) == 2
    assert f"the model of a run is {run / 'model.npz'}" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run / "metrics.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a model file" in err and "pickle" not in err


@pytest.mark.once
def test_early_stopping_is_announced(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "60"]
    assert cli.main([*argv, "--patience", "2", "--lr", "0.05", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["epochs_run"] < 60
    run, best = metrics["epochs_run"], metrics["best_epoch"]
    assert f"early stopping after epoch {run} of 60: no better validation accuracy" in stdout
    assert f"kept the parameters of epoch {best}, the best validation accuracy" in stdout


@pytest.mark.once
def test_a_run_folder_is_never_overwritten_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--quiet"]
    assert cli.main(argv) == 0
    first = (tmp_path / "runs" / "digits-mlp" / "history.csv").read_bytes()
    assert cli.main([*argv, "--seed", "1"]) == 0  # default folder taken: the next number
    assert (tmp_path / "runs" / "digits-mlp" / "history.csv").read_bytes() == first
    assert (tmp_path / "runs" / "digits-mlp-2" / "history.csv").exists()
    assert cli.main(argv[:-1] + ["--seed", "2"]) == 0
    assert "holds an earlier run: writing to runs/digits-mlp-3/" in capsys.readouterr().out
    explicit = ["--out", "runs/digits-mlp"]
    assert cli.main([*argv, *explicit]) == 2  # an explicit --out is refused...
    err = capsys.readouterr().err
    assert "already holds a run" in err and "pass --overwrite" in err
    assert (tmp_path / "runs" / "digits-mlp" / "history.csv").read_bytes() == first
    assert cli.main([*argv, *explicit, "--seed", "4", "--overwrite"]) == 0  # ...unless asked
    assert (tmp_path / "runs" / "digits-mlp" / "history.csv").read_bytes() != first


@pytest.mark.once
def test_data_cache_option(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.setenv("NNX_DATA_CACHE", "off")
    nnx.datasets._mnist1d_split.cache_clear()
    argv = ["train", "--model", "mlp", "--epochs", "1", "--quiet", "--out"]
    assert cli.main([*argv, str(tmp_path / "a"), "--data-cache", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("mnist1d-*.npz"))) == 1  # the option wins
    assert cli.main([*argv, str(tmp_path / "b"), "--data-cache", "off"]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["data_seconds"] >= 0
    nnx.datasets._mnist1d_split.cache_clear()


def test_run_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        out, code = _train(tmp_path, "numpy", "--quiet", "--epochs", "1")
    finally:
        os.umask(old)
    assert code == 0
    for name in ("history.csv", "learning_curve.png", "metrics.json", "model.npz"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


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


@pytest.mark.once
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


def test_train_and_evaluate_cnn2d_on_digit_images(tmp_path, capsys):
    out = tmp_path / "cnn2d"
    argv = ["train", "--dataset", "digits", "--model", "cnn2d", "--epochs", "1", "--out"]
    assert cli.main([*argv, str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "shape (8, 8, 1)" in stdout and "model cnn2d" in stdout
    net = nnx.load(out / "model.npz")
    assert isinstance(net[0], nnx.Conv2D)
    assert cli.main(["evaluate", str(out / "model.npz")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in capsys.readouterr().out
    wrong = ["train", "--dataset", "mnist1d", "--model", "cnn2d", "--out", str(tmp_path / "x")]
    assert cli.main(wrong) == 2
    assert "takes images" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.once
def test_digits_cnn2d_recipe_reaches_98_percent(tmp_path):
    out = tmp_path / "digits2d"
    argv = ["train", "--dataset", "digits", "--model", "cnn2d", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] >= 0.98


@pytest.mark.slow
@pytest.mark.once
def test_digits_mlp_recipe_reaches_96_percent(tmp_path):
    out = tmp_path / "digits"
    assert (
        cli.main(["train", "--dataset", "digits", "--model", "mlp", "--quiet", "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.96
    assert np.isfinite(metrics["test_loss"])


@pytest.mark.once
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov"])
def test_digits_mlp_with_momentum_takes_its_own_default_lr(tmp_path, optimizer):
    """The mlp recipe's Adam rate (1e-2) makes momentum diverge (10% accuracy): without
    --lr, momentum and nesterov take the recipe's momentum_lr."""
    out = tmp_path / optimizer
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--optimizer", optimizer]
    assert cli.main([*argv, "--epochs", "30", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lr"] == 1e-3 and "momentum_lr" not in metrics
    assert metrics["test_accuracy"] >= 0.95


@pytest.mark.once
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


@pytest.mark.once
@pytest.mark.parametrize("script", ["train_mnist1d_gpu.py", "autoencoder_digits.py"])
@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--epochs", "0"], "error: --epochs must be at least 1, got 0"),
        (["--backend", "torch", "--device", "cuda:99"], "error: backend 'torch'"),
    ],
)
def test_examples_refuse_bad_settings_in_one_line(tmp_path, script, args, text):
    """No library, no GPU or a bad number: one line and exit 2, before any work (as
    ``nnx train``), not a traceback."""
    pytest.importorskip("torch")
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert text in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.once
def test_example_script_matches_the_cli(tmp_path, capsys):
    """Same recipe, seed and thread policy: the example and ``nnx train`` print the same
    epochs and the same test accuracy; without a terminal, one line per epoch."""
    pytest.importorskip("mnist1d")
    common = ["--model", "mlp", "--epochs", "2", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    script = ROOT / "examples" / "train_mnist1d_gpu.py"
    run = subprocess.run(
        [sys.executable, str(script), *common, "--backend", "numpy", "--out", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert cli.main(["train", *common, "--out", str(tmp_path / "c")]) == 0
    mine = capsys.readouterr().out.splitlines()
    theirs = run.stdout.splitlines()
    epochs = [line for line in mine if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs == [line for line in theirs if line.startswith("epoch ")]
    result = next(line for line in mine if line.startswith("test accuracy: "))
    assert theirs[-1].startswith(result.split("[")[0])  # same accuracy, same format


@pytest.mark.slow
@pytest.mark.once
def test_default_main_job_reaches_93_percent_on_mnist1d(tmp_path):
    """``nnx train`` with its defaults (deeper CNN, Adam, NumPy): about 10 s here."""
    pytest.importorskip("mnist1d")
    out = tmp_path / "main"
    assert cli.main(["train", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "cnn" and metrics["backend"] == "numpy"
    assert metrics["test_accuracy"] >= 0.93
    assert metrics["train_seconds"] < 120
