"""The examples: one runs briefly by default (with its --save and the module entry point); the slow
tests, which .ci/run runs, train each fully and check its accuracy."""
import importlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the examples need the `examples` extra")
pytest.importorskip("matplotlib", reason="the examples need the `examples` extra")
sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "examples"))


def example(name):
    return importlib.import_module(name)


def quiet(line):
    pass


def test_binary_runs():
    assert example("train_binary").run(epochs=2, log=quiet)["test_accuracy"] > 0.8


def test_save_writes_loadable_params(tmp_path):
    from purebp.checkpoint import load_params

    result = example("train_binary").main(["--epochs", "1", "--save", str(tmp_path / "binary.npz")])
    loaded = load_params(tmp_path / "binary.npz")
    np.testing.assert_array_equal(loaded[0]["w"], result["params"][0]["w"])


@pytest.mark.slow
def test_mlp_reaches_95_percent_and_both_networks_agree():
    results = example("train_mlp").run(log=quiet)
    assert results["gradient_gap"] < 1e-6  # layer by layer and purebp.mlp: the same gradients
    assert results["layer-by-layer"]["test_accuracy"] >= 0.95
    assert results["purebp.mlp"]["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_binary_reaches_95_percent():
    assert example("train_binary").run(log=quiet)["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_cnn_reaches_97_percent():
    assert example("train_cnn").run(log=quiet)["test_accuracy"] >= 0.97


@pytest.mark.slow
def test_data_parallel_cnn_reaches_97_percent():
    assert example("train_data_parallel").run(log=quiet)["test_accuracy"] >= 0.97


@pytest.mark.slow
def test_autoencoder_reconstructs_and_writes_its_pictures(tmp_path):
    result = example("train_autoencoder").run(out_dir=tmp_path, log=quiet)
    assert result["test_loss"] < 0.005
    for png in ("reconstructions.png", "loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_as_a_module_from_the_root():
    """`python -m examples.train_cnn` from the repository's root, as well as `python examples/train_cnn.py`
    (the other examples import `common` the same way)."""
    root = pathlib.Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-m", "examples.train_cnn", "--help"], cwd=root, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
