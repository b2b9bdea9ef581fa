"""A first end-to-end check on every backend: the seed CNN takes a training step."""

import numpy as np
import pytest

import nnx


def test_seed_cnn_step(backend, rng):
    net = nnx.Sequential(
        nnx.Conv1D(3, 1, 8),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(8 * 15, 10),
        nnx.ReLU(),
        nnx.Linear(10, 3),
    )
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1)
    X = rng.standard_normal((16, 32, 1))
    y = rng.integers(0, 3, 16)
    first = float(np.mean(nnx.to_numpy(opt.step(X, y))))
    for _ in range(30):
        last = float(np.mean(nnx.to_numpy(opt.step(X, y))))
    assert np.isfinite(first) and last < first
    assert nnx.backends.backend_of(net[0]._parameters["weight"]).name == backend


def test_dir_nnx_shows_only_public_names():
    import nnx

    assert set(dir(nnx)) == {*nnx.__all__, "__version__"}
    assert "annotations" not in dir(nnx)


def test_old_model_name_is_an_alias():
    import nnx

    assert nnx.models.resolve("seed_cnn") == "simple_cnn"
    assert nnx.models.seed_cnn is nnx.models.simple_cnn
    assert repr(nnx.models.build("seed_cnn", 40, 1, 10)) == repr(
        nnx.models.build("simple_cnn", 40, 1, 10)
    )
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        nnx.models.build("resnet", 40, 1, 10)


def test_models_for_input_sequences_and_images():
    import numpy as np

    import nnx

    net = nnx.models.for_input("cnn2d", (8, 8, 1), 10)
    assert tuple(net(nnx.asarray(np.zeros((3, 8, 8, 1)))).shape) == (3, 10)
    assert any(isinstance(m, nnx.BatchNorm) for m in net) and any(
        isinstance(m, nnx.Dropout) for m in net
    )
    assert tuple(nnx.models.cnn2d(13, 6, 3, 4)(nnx.asarray(np.zeros((2, 13, 6, 3)))).shape) == (
        2,
        4,
    )
    assert repr(nnx.models.for_input("cnn", (40, 1), 10)) == repr(
        nnx.models.build("cnn", 40, 1, 10)
    )
    with pytest.raises(ValueError, match=r"'cnn2d' takes \(height, width, channels\) images"):
        nnx.models.for_input("cnn2d", (64, 1), 10)
    with pytest.raises(ValueError, match=r"use nnx.models.for_input"):
        nnx.models.build("cnn2d", 64, 1, 10)
    with pytest.raises(ValueError, match=r"at least 4x4, got 3x8"):
        nnx.models.cnn2d(3, 8, 1, 10)
