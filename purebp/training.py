"""Training with optax as it is: a jitted step, a key-driven batch iterator, evaluation and ``fit``.

The default optimizer is ``optax.sgd(learning_rate, momentum=0.9)``; any
``optax.GradientTransformation`` works. Nothing here knows about purebp's ops: the gradients come
from whatever ``loss_fn`` calls (with purebp's layers, hand-written VJPs all the way down).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Returns ``step(params, opt_state, *batch) -> (params, opt_state, loss)``, pure and jitted.

    Args:
      loss_fn: ``loss_fn(params, *batch)`` returning a scalar.
      optimizer: an optax gradient transformation, e.g. ``optax.sgd(0.1, momentum=0.9)``.
    """

    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step)


def batches(key, arrays: Sequence, batch_size: int, *, shuffle: bool = True,
            drop_remainder: bool = False) -> Iterator[tuple]:
    """Yields tuples of aligned slices of ``arrays``, one epoch, in an order fixed by ``key``.

    Args:
      key: a ``jax.random`` key; the same key gives the same order. Ignored when not shuffling.
      arrays: arrays sharing their leading (example) dim.
      batch_size: examples per batch.
      shuffle: permute the examples first.
      drop_remainder: skip a last batch smaller than ``batch_size`` (keeps one compiled shape).

    Raises:
      ValueError: if the arrays' lengths differ or ``batch_size`` is not positive.
    """
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"`arrays` must share their leading dim, got lengths {[len(a) for a in arrays]}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    n = lengths.pop()
    order = np.asarray(jax.random.permutation(key, n)) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield tuple(a[index] for a in arrays)


def accuracy(outputs, labels) -> jax.Array:
    """Fraction of correct predictions.

    ``outputs [N, C]`` with ``C > 1``: argmax against integer ``labels [N]`` or one-hot
    ``labels [N, C]``. ``outputs [N]`` or ``[N, 1]``: logits, positive means class 1, against 0/1
    ``labels`` of the same size.
    """
    outputs, labels = jnp.asarray(outputs), jnp.asarray(labels)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        predicted = outputs.reshape(-1) > 0
        return jnp.mean(predicted == (labels.reshape(-1) > 0.5))
    if labels.ndim == outputs.ndim:
        labels = labels.argmax(-1)
    return jnp.mean(outputs.argmax(-1) == labels)


def evaluate(apply_fn: Callable, params, inputs, labels, *, loss_fn: Callable,
             batch_size: int = 1024) -> dict[str, float]:
    """Mean loss and accuracy of ``apply_fn(params, inputs)`` over a dataset, in batches.

    Args:
      apply_fn: the model, ``apply_fn(params, x) -> outputs``.
      params: its parameters.
      inputs, labels: the dataset.
      loss_fn: per-example loss ``loss_fn(outputs, labels) -> [batch]`` (or elementwise, averaged).
      batch_size: examples per forward pass.

    Returns:
      ``{"loss": mean loss, "accuracy": fraction correct}`` as Python floats.
    """
    forward = _jitted(apply_fn)
    total_loss = total_correct = 0.0
    for x, y in batches(None, (inputs, labels), batch_size, shuffle=False):
        outputs = forward(params, x)
        total_loss += float(jnp.mean(loss_fn(outputs, y))) * len(x)
        total_correct += float(accuracy(outputs, y)) * len(x)
    return {"loss": total_loss / len(inputs), "accuracy": total_correct / len(inputs)}


@functools.lru_cache(maxsize=64)
def _jitted(apply_fn):
    """One jitted forward per model, so evaluating after every epoch compiles once."""
    return jax.jit(apply_fn)


def fit(loss_fn: Callable, params, data: Sequence, *, key, epochs: int, batch_size: int,
        optimizer: optax.GradientTransformation | None = None, learning_rate: float = 0.1,
        evaluate_fn: Callable | None = None, log: Callable[[str], None] | None = print):
    """Trains ``params`` on ``data`` for ``epochs``, one progress line per epoch.

    Args:
      loss_fn: ``loss_fn(params, *batch)`` returning the mean loss of a batch.
      params: the initial parameters.
      data: arrays with a shared leading dim, sliced into ``batch`` for ``loss_fn``.
      key: drives the shuffling; the same key gives the same run.
      epochs: passes over ``data``.
      batch_size: examples per step; the last, smaller batch of an epoch is dropped, so the step
        compiles once.
      optimizer: defaults to ``optax.sgd(learning_rate, momentum=0.9)``.
      learning_rate: for the default optimizer.
      evaluate_fn: optional ``evaluate_fn(params) -> dict`` of metrics (e.g. ``test_accuracy``),
        run after each epoch and logged; its names must differ from the history's own.
      log: where progress lines go; None for silence.

    Returns:
      ``(params, history)``: the trained parameters and one dict per epoch with ``epoch``,
      ``loss`` (the mean training loss), ``seconds``, ``examples_per_second`` and the metrics of
      ``evaluate_fn``.
    """
    if len(data[0]) < batch_size:
        raise ValueError(f"`batch_size` ({batch_size}) must not exceed the {len(data[0])} examples of `data`.")
    optimizer = optax.sgd(learning_rate, momentum=0.9) if optimizer is None else optimizer
    step = make_train_step(loss_fn, optimizer)
    opt_state = optimizer.init(params)
    history = []
    for epoch in range(1, epochs + 1):
        key, epoch_key = jax.random.split(key)
        start, losses = time.perf_counter(), []
        for batch in batches(epoch_key, data, batch_size, drop_remainder=True):
            params, opt_state, loss = step(params, opt_state, *batch)
            losses.append(loss)
        mean_loss = float(jnp.mean(jnp.stack(losses)))  # waits for the last step
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "loss": mean_loss, "seconds": seconds,
                  "examples_per_second": len(losses) * batch_size / seconds}
        metrics = evaluate_fn(params) if evaluate_fn else {}
        if set(metrics) & set(record):
            raise ValueError(f"`evaluate_fn`'s metrics {sorted(metrics)} must not reuse the names {sorted(record)}; "
                             f"prefix them, e.g. 'test_loss'.")
        record.update(metrics)
        history.append(record)
        if log:
            log(" ".join(_format(name, value) for name, value in record.items()))
    return params, history


def _format(name, value):
    if name == "epoch":
        return f"epoch {value:3d}"
    if name == "examples_per_second":
        return f"{value:,.0f} ex/s"
    if name == "seconds":
        return f"{value:.2f}s"
    return f"{name} {value:.4f}"
