"""The worked examples of docs/extending.rst (a layer, an optimiser, a backend) run."""

import doctest
from pathlib import Path

import pytest

import nnx

PAGE = Path(__file__).resolve().parent.parent / "docs" / "extending.rst"


def test_extending_examples_run():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    saved = nnx.get_default_dtype()
    try:
        with nnx.use_backend("numpy"):
            result = doctest.testfile(
                str(PAGE), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False
            )
    finally:
        nnx.set_default_dtype(saved)
    assert result.attempted > 20
    assert result.failed == 0, f"{result.failed} example(s) of {PAGE.name} failed (see above)"
