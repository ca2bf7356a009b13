"""Training with optax as it is: a jitted step, a key-driven batch iterator, evaluation and ``fit``.

The default optimizer is ``optax.sgd(learning_rate, momentum=0.9)``; any
``optax.GradientTransformation`` works. Nothing here knows about purebp's ops: the gradients come
from whatever ``loss_fn`` calls (with purebp's layers, hand-written VJPs all the way down).

Data parallelism is JAX's own: pass a ``jax.sharding.Mesh`` (``data_parallel_mesh()`` builds one
over every device of every process, ``jax.make_mesh`` one of your own) and the step is jitted with
``NamedSharding``s that split each batch along its leading dim over the mesh; params and optimizer
state keep the sharding they were placed with (``replicate`` for data parallelism,
``shard_params`` for FSDP, any ``jax.device_put`` of yours for tensor parallelism), and XLA inserts
the collectives. Auto and Explicit mesh axes both work, as they are. Under
``jax.distributed.initialize`` the same code runs on several hosts, one process per host.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, mesh: Mesh | None = None,
                    batch_axis: str | Sequence[str] | None = None, has_state: bool = False,
                    has_key: bool = False) -> Callable:
    """Returns ``step(params, opt_state, *batch) -> (params, opt_state, loss)``, pure and jitted.

    With a ``mesh`` the step is data-parallel: it is jitted with ``in_shardings`` that split every
    batch array along its leading dim over ``batch_axis``. ``params`` and ``opt_state`` come back
    sharded as they went in: each leaf placed on ``mesh`` with a ``NamedSharding`` keeps it (FSDP,
    tensor parallelism), any other leaf (numpy, one device) is replicated. ``loss_fn`` still sees
    the whole batch, and XLA reduces its mean and the gradients across devices with its own
    collectives (so ``batch_norm``'s statistics are the whole batch's, as on one device). One
    function rather than a separate data-parallel one, because the mesh changes where arrays
    live, not the step's arithmetic or signature: going from one device to many is one argument.

    A model with state or randomness (``purebp.layers``' ``BatchNorm``, ``Dropout``) adds what it
    needs before the batch, in the loss and in the step alike:

    - ``has_state``: ``loss_fn(params, state, *batch) -> (loss, new_state)``, and
      ``step(params, opt_state, state, *batch) -> (params, opt_state, new_state, loss)``. The state
      (``BatchNorm``'s running statistics) is carried, never differentiated nor updated by the
      optimizer.
    - ``has_key``: a PRNG key after ``params`` (and ``state``), ``loss_fn(params, [state,] key,
      *batch)`` and ``step(params, opt_state, [state,] key, *batch)``: a fresh one per step for
      ``Dropout``.

    Args:
      loss_fn: ``loss_fn(params, *batch)`` returning a scalar (with the additions above).
      optimizer: an optax gradient transformation, e.g. ``optax.sgd(0.1, momentum=0.9)``.
      mesh: optional ``jax.sharding.Mesh``, e.g. ``data_parallel_mesh()`` or ``jax.make_mesh``'s;
        None for one device. Auto axes let XLA place the collectives; Explicit axes (``jax.make_mesh``'s
        default) carry every array's sharding in its type, and the step is traced under
        ``jax.set_mesh(mesh)``.
      batch_axis: the mesh axis (or axes) that splits the batch; None means every axis of ``mesh``.
      has_state: whether ``loss_fn`` takes and returns a model state.
      has_key: whether ``loss_fn`` takes a PRNG key.

    Raises:
      TypeError: if ``mesh`` is not a ``jax.sharding.Mesh``, or ``has_state``/``has_key`` not a bool.
      ValueError: if ``batch_axis`` names no axis of ``mesh``, or, when called, if a batch's
        leading dim does not divide evenly over the devices along ``batch_axis``.
    """
    for flag, name in ((has_state, "has_state"), (has_key, "has_key")):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
    carried = has_state + has_key  # the arguments between opt_state and the batch

    def step(params, opt_state, *args):
        if has_state:
            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(params, *args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, *((state,) if has_state else ()), loss)

    if mesh is None:
        return jax.jit(step)
    sharded, shards = _batch_sharding(mesh, batch_axis)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = {}  # one jitted step per placement of params, opt_state and the carried state and key

    def placed(params, opt_state, args):
        """The arguments on ``mesh`` and the step jitted for their placement. Every leaf is put where
        the step expects it first: under Explicit axes a jitted function types its arguments by where
        they are, not by its ``in_shardings``, and a batch typed whole would be gathered on every device."""
        extras, batch = tuple(args[:carried]), tuple(args[carried:])
        for leaf in jax.tree_util.tree_leaves(batch):
            _check_divisible(np.shape(leaf)[0] if np.ndim(leaf) else 0, shards, "batch", sharded)
        where = _placements((params, opt_state, extras), mesh)
        key = (jax.tree_util.tree_structure(where), tuple(jax.tree_util.tree_leaves(where)))
        if key not in jitted:
            # `batch` travels as one tuple so that one sharding covers however many arrays it holds.
            state_out = (where[2][0],) if has_state else ()  # the new state placed as the old
            jitted[key] = jax.jit(lambda params, opt_state, extras, batch: step(params, opt_state, *extras, *batch),
                                  in_shardings=(*where, sharded),
                                  out_shardings=(*where[:2], *state_out, replicated))
        arguments = _put((params, opt_state, extras), where)
        return jitted[key], (*arguments, _put(batch, jax.tree_util.tree_map(lambda _: sharded, batch)))

    @functools.wraps(step)
    def data_parallel_step(params, opt_state, *args):
        jitted_step, arguments = placed(params, opt_state, args)
        with jax.set_mesh(mesh):
            return jitted_step(*arguments)

    def lower(params, opt_state, *args):
        jitted_step, arguments = placed(params, opt_state, args)
        with jax.set_mesh(mesh):
            return jitted_step.lower(*arguments)

    # As a jitted function's: `step.lower(params, opt_state, *batch).compile().as_text()` shows the collectives.
    data_parallel_step.lower = lower
    return data_parallel_step


def _put(tree, shardings):
    """``tree``'s leaves on ``shardings``; a leaf already there is kept as it is (no copy)."""
    return jax.tree_util.tree_map(
        lambda leaf, sharding: leaf if getattr(leaf, "sharding", None) == sharding else jax.device_put(leaf, sharding),
        tree, shardings)


def _placements(tree, mesh):
    """Each leaf's sharding on ``mesh`` if it has one there (FSDP, tensor parallel), else replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def placement(leaf):
        sharding = getattr(leaf, "sharding", None)
        return sharding if isinstance(sharding, NamedSharding) and sharding.mesh == mesh else replicated

    return jax.tree_util.tree_map(placement, tree)


def _on_mesh(tree, mesh):
    """``tree`` on ``mesh``: leaves already placed there as they are, the others replicated."""
    return _put(tree, _placements(tree, mesh))


def data_parallel_mesh(devices: Sequence | None = None, axis_name: str = "batch", *,
                       axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Auto) -> Mesh:
    """A one-dimensional mesh for data parallelism, by default over every device JAX sees.

    Args:
      devices: the devices, in mesh order; None means ``jax.devices()``, every device of every
        process under ``jax.distributed``, laid out by ``jax.make_mesh`` for fast collectives.
      axis_name: the name of the mesh's one axis.
      axis_type: ``AxisType.Auto`` (XLA propagates shardings and places the collectives) or
        ``AxisType.Explicit`` (every array's sharding is part of its type, ``jax.make_mesh``'s
        default).

    Returns:
      ``jax.sharding.Mesh`` of shape ``{axis_name: len(devices)}``.

    Raises:
      TypeError: if ``devices`` holds anything but JAX devices, ``axis_name`` is not a string or
        ``axis_type`` is not an ``AxisType``.
      ValueError: if ``devices`` is empty.

    >>> dict(data_parallel_mesh(jax.devices()[:1]).shape)
    {'batch': 1}
    """
    if not isinstance(axis_name, str):
        raise TypeError(f"`axis_name` must be a string, got {axis_name!r}.")
    if not isinstance(axis_type, jax.sharding.AxisType):
        raise TypeError(f"`axis_type` must be a jax.sharding.AxisType (Auto or Explicit), got {axis_type!r}.")
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (axis_name,), axis_types=(axis_type,))
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must list at least one device, got none.")
    if not all(isinstance(device, jax.Device) for device in devices):
        raise TypeError(f"`devices` must hold jax devices (e.g. from jax.devices()), got {devices!r}.")
    return Mesh(np.asarray(devices), (axis_name,), axis_types=(axis_type,))


def replicate(tree, mesh: Mesh):
    """Copies every leaf of ``tree`` (params, optimizer state) to every device of ``mesh``.

    Under several processes each must pass the same values, as with ``jax.device_put``.
    """
    return jax.device_put(tree, NamedSharding(_checked(mesh), PartitionSpec()))


def shard_params(tree, mesh: Mesh, *, axis: str | None = None):
    """Places ``tree`` (params) fully sharded over ``axis`` (FSDP): each device keeps one slice.

    Each weight (a leaf of two or more dims) is split along its input-feature dim, the second to
    last (``dense``'s ``in``, a kernel's ``C_in``), when ``axis``'s size divides it; biases,
    scalars and weights it does not divide stay replicated. Splitting the contracted dim keeps
    every layer's output split as its input is, so the same params work under Auto and Explicit
    axes. A step that uses them gathers each weight where the forward needs it and reduces its
    gradient to the slices, XLA placing both collectives; ``make_train_step`` keeps the placement,
    and ``optimizer.init`` of the placed params gives a state placed alike.

    Args:
      tree: a pytree of arrays.
      mesh: a ``jax.sharding.Mesh``.
      axis: the mesh axis to split over; None means the mesh's only axis.

    Returns:
      The same pytree of ``jax.Array`` s, each sharded ``PartitionSpec(..., axis, ...)`` or
      replicated.

    Raises:
      ValueError: if ``axis`` is None for a mesh of several axes, or names none of them.
    """
    names = _checked(mesh).axis_names
    if axis is None and len(names) != 1:
        raise ValueError(f"`axis` must name one of the axes {names} of `mesh`, which has several; got None.")
    axis = names[0] if axis is None else axis
    if axis not in names:
        raise ValueError(f"`axis` must name an axis of `mesh` {names}, got {axis!r}.")
    size = mesh.shape[axis]

    def sharding(leaf):
        shape = np.shape(leaf)
        split = len(shape) >= 2 and shape[-2] % size == 0
        return NamedSharding(mesh, PartitionSpec(*(None,) * (len(shape) - 2), axis, None) if split else PartitionSpec())

    return jax.device_put(tree, jax.tree_util.tree_map(sharding, tree))


def shard_batch(batch, mesh: Mesh, *, batch_axis: str | Sequence[str] | None = None):
    """Places one batch on ``mesh``, split along its leading (example) dim over ``batch_axis``.

    For your own input pipeline. Each process passes the rows it loaded: under one process the
    whole batch; under several (``jax.distributed``), its own slice, the global batch being the
    processes' slices in process order (``jax.make_array_from_process_local_data``).

    Args:
      batch: a pytree (e.g. a tuple) of arrays that share their leading dim.
      mesh: a ``jax.sharding.Mesh``.
      batch_axis: the mesh axis (or axes) that splits the batch; None means every axis of ``mesh``.

    Returns:
      The same pytree of global ``jax.Array`` s, each sharded ``PartitionSpec(batch_axis)``.

    Raises:
      ValueError: if the arrays' leading dims differ or do not divide evenly over this
        process's devices along ``batch_axis``.
    """
    sharding, shards = _batch_sharding(mesh, batch_axis)
    leaves = jax.tree_util.tree_leaves(batch)
    lengths = [np.shape(leaf)[0] if np.ndim(leaf) else 0 for leaf in leaves]
    if len(set(lengths)) > 1:
        raise ValueError(f"`batch` arrays must share their leading dim, got lengths {lengths}.")
    processes = len({device.process_index for device in mesh.devices.flat})
    _check_divisible(lengths[0] if lengths else 0, shards // processes, "batch", sharding)
    return jax.make_array_from_process_local_data(sharding, batch)


def batches(key, arrays: Sequence, batch_size: int, *, shuffle: bool = True, drop_remainder: bool = False,
            mesh: Mesh | None = None, batch_axis: str | Sequence[str] | None = None, start: int = 0) -> Iterator[tuple]:
    """Yields tuples of aligned slices of ``arrays``, one epoch, in an order fixed by ``key``.

    With a ``mesh``, each batch comes as global ``jax.Array`` s split along the leading dim over
    ``batch_axis``, ready for ``make_train_step(..., mesh=mesh)``. Under several processes every
    process passes the same ``arrays`` and ``key`` and places only the rows its own devices hold,
    so a run does not depend on how the devices are spread over hosts.

    Args:
      key: a ``jax.random`` key; the same key gives the same order. Ignored when not shuffling.
      arrays: arrays sharing their leading (example) dim.
      batch_size: examples per batch (the global batch, with a ``mesh``).
      shuffle: permute the examples first.
      drop_remainder: skip a last batch smaller than ``batch_size`` (keeps one compiled shape).
      mesh: optional ``jax.sharding.Mesh`` to place each batch on.
      batch_axis: the mesh axis (or axes) that splits the batch; None means every axis of ``mesh``.
      start: the index of the first batch to yield: the epoch's earlier batches are skipped without
        being gathered, to resume an epoch part-way (as ``fit`` does from a checkpoint).

    Raises:
      ValueError: if the arrays' lengths differ, ``batch_size`` is not positive, ``start`` is
        negative, or, with a ``mesh``, ``batch_size`` or a kept last batch does not divide evenly
        over the devices along ``batch_axis``.
    """
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"`start` must be a non-negative int (a batch index), got {start!r}.")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"`arrays` must share their leading dim, got lengths {[len(a) for a in arrays]}.")
    batch_size = _positive_int(batch_size, "batch_size")
    n = lengths.pop()
    stop = n - n % batch_size if drop_remainder else n
    if mesh is not None:
        sharding, shards = _batch_sharding(mesh, batch_axis)
        _check_divisible(batch_size, shards, "batch_size", sharding)
        if stop % batch_size % shards:
            raise ValueError(f"`batch_size` ({batch_size}) leaves a last batch of {stop % batch_size} of the {n} "
                             f"examples, which the {shards} devices of `mesh` cannot split evenly; pass "
                             f"drop_remainder=True.")
    order = np.asarray(jax.random.permutation(key, n)) if shuffle else np.arange(n)
    for first in range(start * batch_size, stop, batch_size):
        index = order[first:first + batch_size]
        batch = tuple(a[index] for a in arrays)
        if mesh is not None:  # every process holds the global batch and places its own rows of it
            batch = tuple(jax.make_array_from_process_local_data(sharding, a, a.shape) for a in batch)
        yield batch


def _positive_int(value, name):
    """``value`` as an int: a Python or NumPy integer (not a bool) of at least 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def _checked(mesh):
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, e.g. training.data_parallel_mesh(), got {mesh!r}.")
    return mesh


def _batch_sharding(mesh, batch_axis):
    """The batch's ``NamedSharding`` (leading dim split over ``batch_axis``) and its number of shards."""
    mesh = _checked(mesh)
    names = mesh.axis_names
    axes = names if batch_axis is None else (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis)
    if not axes or not all(axis in names for axis in axes) or len(set(axes)) < len(axes):
        raise ValueError(f"`batch_axis` must name distinct axes of `mesh` {names}, got {batch_axis!r}.")
    spec = PartitionSpec(axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, spec), math.prod(mesh.shape[axis] for axis in axes)


def _check_divisible(size, shards, name, sharding):
    if size % shards:
        multiples = " or ".join(str(m) for m in (size // shards * shards, (size // shards + 1) * shards) if m)
        raise ValueError(f"`{name}` ({size} examples) must be divisible by the {shards} devices that split it along "
                         f"mesh axis {sharding.spec[0]!r} of {dict(sharding.mesh.shape)}; use a multiple of {shards}, "
                         f"e.g. {multiples}.")


def accuracy(outputs, labels) -> jax.Array:
    """Fraction of correct predictions.

    ``outputs [N, C]`` with ``C > 1``: argmax against integer ``labels [N]`` or one-hot
    ``labels [N, C]``. ``outputs [N]`` or ``[N, 1]``: logits, positive means class 1, against 0/1
    ``labels`` of the same size.
    """
    return jnp.mean(_correct(jnp.asarray(outputs), jnp.asarray(labels)))


def _correct(outputs, labels) -> jax.Array:
    """``[N]`` booleans: whether each prediction is right, by ``accuracy``'s rules."""
    if outputs.ndim == 1 or outputs.shape[-1] == 1:  # logits: positive means class 1
        column = lambda a: a if a.ndim == 1 else a[:, 0]
        return (column(outputs) > 0) == (column(labels) > 0.5)
    if labels.ndim == outputs.ndim:
        labels = labels.argmax(-1)
    return outputs.argmax(-1) == labels


def evaluate(apply_fn: Callable, params, inputs, labels, *, loss_fn: Callable, batch_size: int = 1024,
             mesh: Mesh | None = None, batch_axis: str | Sequence[str] | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``apply_fn(params, inputs)`` over a dataset, in batches.

    Args:
      apply_fn: the model, ``apply_fn(params, x) -> outputs``.
      params: its parameters.
      inputs, labels: the dataset.
      loss_fn: per-example loss ``loss_fn(outputs, labels) -> [batch]`` (or elementwise, averaged).
      batch_size: examples per forward pass (the global batch, with a ``mesh``).
      mesh: optional ``jax.sharding.Mesh``: each batch is split over ``batch_axis`` as in
        ``batches`` and the forward runs data-parallel, with ``params`` where they are (replicated
        or sharded on ``mesh``; anything else is replicated). A last batch that the devices cannot
        split evenly is padded with copies of its first example, which are left out of the means.
      batch_axis: the mesh axis (or axes) that splits the batch; None means every axis of ``mesh``.

    Returns:
      ``{"loss": mean loss, "accuracy": fraction correct}`` as Python floats.

    Raises:
      ValueError: if ``inputs`` is empty, or ``batch_axis`` names no axis of ``mesh``.
    """
    count, batch_size = len(inputs), _positive_int(batch_size, "batch_size")
    if count == 0:
        raise ValueError("`inputs` must hold at least one example, got none.")
    shards = 1
    if mesh is not None:
        sharding, shards = _batch_sharding(mesh, batch_axis)
        params = _on_mesh(params, mesh)
    forward = _per_example_metrics(apply_fn, loss_fn)
    total_loss = total_correct = 0.0
    for x, y in batches(None, (inputs, labels), batch_size, shuffle=False):
        kept = len(x)
        if mesh is not None:
            pad = -kept % shards  # copies of the first example make the batch split evenly
            x, y = (np.concatenate([a, np.repeat(a[:1], pad, 0)]) if pad else a for a in (np.asarray(x), np.asarray(y)))
            x, y = (jax.make_array_from_process_local_data(sharding, a, a.shape) for a in (x, y))
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            batch_loss, batch_correct = forward(params, x, y, kept)
        total_loss += float(batch_loss)
        total_correct += float(batch_correct)
    return {"loss": total_loss / count, "accuracy": total_correct / count}


@functools.lru_cache(maxsize=64)
def _per_example_metrics(apply_fn, loss_fn):
    """One jitted ``(params, x, y, kept) -> (Σ loss, Σ correct)`` over the first ``kept`` examples, per
    model and loss, so evaluating after every epoch compiles once and a padded batch's copies are
    left out (``kept`` is traced: a last, smaller batch compiles no new program for it)."""

    def metrics(params, x, y, kept):
        outputs = apply_fn(params, x)
        losses = jnp.asarray(loss_fn(outputs, y))  # [N], [N, ...] (averaged per example) or a batch mean
        losses = jnp.broadcast_to(losses, y.shape[:1]) if losses.ndim == 0 else losses
        losses = losses.mean(tuple(range(1, losses.ndim))) if losses.ndim > 1 else losses
        counted = jnp.arange(y.shape[0]) < kept
        return jnp.where(counted, losses, 0).sum(), (counted & _correct(outputs, y)).sum()

    return jax.jit(metrics)


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What ``fit`` returns: pass ``params``, ``opt_state`` (and ``state``) back to ``fit`` to train on.

    Unpacks and indexes as the tuple ``(params, opt_state, history)``, as before ``state`` came; a
    model's ``state`` (None without one) is read by name.
    """
    params: Any
    opt_state: Any
    history: list[dict]  # one record per epoch: see ``fit``
    state: Any = None

    def __iter__(self):  # the three names a run unpacks to, with or without a model state
        return iter(self[:])

    def __getitem__(self, index):  # and indexed, as the named tuple it was: fitted[0] is the params
        return (self.params, self.opt_state, self.history)[index]

    def __len__(self):
        return 3


def fit(loss_fn: Callable, params, data: Sequence, *, key, epochs: int, batch_size: int,
        optimizer: optax.GradientTransformation | None = None, learning_rate: float = 0.1, opt_state=None,
        evaluate_fn: Callable | None = None, log: Callable[[str], None] | None = print, progress: bool | None = None,
        mesh: Mesh | None = None, checkpoint_dir: str | os.PathLike | None = None, save_every: int | None = None,
        max_to_keep: int | None = 3, resume: bool = True, state=None, has_key: bool = False) -> Fitted:
    """Trains ``params`` on ``data`` for ``epochs``, one log line per epoch; checkpointed and resumable.

    With a ``checkpoint_dir``, ``fit`` saves where the run stands with Orbax (an
    ``orbax.checkpoint.CheckpointManager`` over the directory, one subdirectory per saved step,
    written asynchronously and renamed into place when complete): the params, the optimizer
    state, the epoch and batch reached, the data-order key, the losses of the epoch in progress
    and the history. Called again on the same directory, it restores the latest complete
    checkpoint and goes on from there, so that a run stopped and resumed ends bit for bit where
    the same run straight through would have (on a deterministic backend such as the CPU). A
    checkpoint is also saved at the end, and on ``KeyboardInterrupt`` (Ctrl-C) before it is
    re-raised. A process killed outright (SIGKILL, a preempted machine) loses the steps since the
    last complete checkpoint, nothing more: an interrupted write is never taken for one.

    A model with state (``BatchNorm``) or randomness (``Dropout``) trains as ``make_train_step``'s
    ``has_state`` and ``has_key`` describe: pass its ``state`` (``model.init_state(input_shape)``)
    and ``has_key=True``. The state is threaded from step to step, evaluated with, checkpointed
    beside the params and restored with them; the key of each step is folded from the epoch's
    data-order key and the batch's index, so a resumed run draws the same dropout masks.

    Args:
      loss_fn: ``loss_fn(params, *batch)`` returning the mean loss of a batch; ``loss_fn(params,
        [state,] [key,] *batch)`` returning ``(loss, new_state)`` with a ``state`` (just the loss
        without one), the key with ``has_key``.
      params: the initial parameters (and, when resuming, the template the checkpoint's must match
        in structure, shapes and dtypes; their placement is where the restored params go).
      data: arrays with a shared leading dim, sliced into ``batch`` for ``loss_fn``.
      key: drives the shuffling; the same key gives the same run. A resumed run takes the data
        order on from its checkpoint.
      epochs: the run's passes over ``data`` in all, counting those of a checkpoint it resumes.
      batch_size: examples per step; the last, smaller batch of an epoch is dropped, so the step
        compiles once.
      optimizer: defaults to ``optax.sgd(learning_rate, momentum=0.9)``.
      learning_rate: for the default optimizer.
      opt_state: the optimizer state to start from, e.g. a previous ``fit``'s; None means
        ``optimizer.init(params)``.
      evaluate_fn: optional ``evaluate_fn(params) -> dict`` of numbers (e.g. ``test_accuracy``),
        run after each epoch and logged; its names must differ from the history's own. With a
        ``state``, ``evaluate_fn(params, state)``.
      log: where the per-epoch lines go; None for silence.
      progress: a progress bar over each epoch (tqdm, on stderr) with the latest loss and examples
        per second; None shows it when stderr is a terminal.
      mesh: optional ``jax.sharding.Mesh`` for data-parallel training: each batch of
        ``batch_size`` examples is split over all its devices (see ``batches``); params placed on
        ``mesh`` keep their sharding (``shard_params`` for FSDP), any others are replicated, the
        optimizer state follows them, and the returned params are placed as they were. A resumed
        run restores its arrays onto those same shardings.
      checkpoint_dir: where to save checkpoints and resume from; None saves nothing.
      save_every: optimizer steps between checkpoints; None saves at the end of every epoch.
      max_to_keep: the number of latest checkpoints kept; None keeps them all.
      resume: go on from the latest checkpoint in ``checkpoint_dir``. False refuses a directory
        that holds checkpoints rather than overwrite them.
      state: the model's state to start from (a pytree of arrays), e.g. ``model.init_state(shape)``;
        None for a model without one.
      has_key: pass ``loss_fn`` a fresh PRNG key each step.

    Returns:
      ``Fitted(params, opt_state, history, state)``: the trained parameters, the optimizer state,
      one dict per epoch with ``epoch``, ``loss`` (the mean training loss), ``seconds`` and
      ``examples_per_second`` (of the steps run in this call: a resumed epoch counts those after
      the checkpoint) and the metrics of ``evaluate_fn``, and the model's state (None without one).

    Raises:
      TypeError: if ``data`` is not a sequence of arrays.
      ValueError: if ``epochs``, ``batch_size``, ``save_every`` or ``max_to_keep`` is not a
        positive int, ``batch_size`` exceeds the examples, or, when resuming, the checkpoint was
        made with another ``batch_size`` or number of examples, holds params or an optimizer state
        of another structure, shape or dtype, or has run past ``epochs``; if ``resume`` is False
        and ``checkpoint_dir`` holds checkpoints.
    """
    if hasattr(data, "shape") or not isinstance(data, Sequence) or not all(hasattr(a, "shape") for a in data):
        got = f"an array of shape {data.shape}" if hasattr(data, "shape") else repr(type(data).__name__)
        raise TypeError(f"`data` must be a tuple of arrays that share their leading dim, e.g. (x, y), got {got}; "
                        f"pass (x, y).")
    epochs, batch_size = _positive_int(epochs, "epochs"), _positive_int(batch_size, "batch_size")
    save_every = None if save_every is None else _positive_int(save_every, "save_every")
    if len(data[0]) < batch_size:
        raise ValueError(f"`batch_size` ({batch_size}) must not exceed the {len(data[0])} examples of `data`.")
    optimizer = optax.sgd(learning_rate, momentum=0.9) if optimizer is None else optimizer
    step = _run_step(make_train_step(loss_fn, optimizer, mesh=mesh, has_state=state is not None, has_key=has_key),
                     state is not None, has_key)
    if mesh is not None:  # leaves already on the mesh keep their sharding (shard_params), the rest are replicated
        params, state = _on_mesh((params, state), mesh)
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    if mesh is not None:
        opt_state = _on_mesh(opt_state, mesh)
    run = _Run(params, opt_state, state, key, epoch=1, batch=0, step=0, epoch_losses=[], history=())
    if checkpoint_dir is None:
        for run in _epochs(run, step, data, epochs, batch_size, mesh, evaluate_fn, log, progress):
            pass
        return run.fitted()
    checkpoints = _Checkpoints(checkpoint_dir, max_to_keep, batch_size=batch_size, examples=len(data[0]))

    def due(run):  # every `save_every` steps, or at each epoch's end
        return run.step % save_every == 0 if save_every else run.batch == 0

    try:
        if (saved := checkpoints.latest_step()) is not None:
            if not resume:
                raise ValueError(f"`checkpoint_dir` {os.fspath(checkpoint_dir)!r} holds checkpoints (the latest at "
                                 f"step {saved}), which resume=False would overwrite; pass resume=True to go on "
                                 f"from it, or an empty directory.")
            run = checkpoints.restore(saved, run, epochs=epochs)
            if log:
                log(f"resumed from {checkpoints.path(saved)}: epoch {run.epoch}, batch {run.batch}, step {run.step}")
        try:
            for run in _epochs(run, step, data, epochs, batch_size, mesh, evaluate_fn, log, progress):
                if due(run):
                    checkpoints.save(run)
                    saved = run.step
        except KeyboardInterrupt:  # the last whole run, saved before the interrupt goes on
            if run.step not in (saved, 0):
                checkpoints.save(run)
            if log and run.step:
                log(f"interrupted: saved step {run.step} (epoch {run.epoch}, batch {run.batch}) to "
                    f"{checkpoints.path(run.step)}; run again with the same checkpoint_dir to resume")
            raise
        if run.step != saved:
            checkpoints.save(run)
    finally:
        checkpoints.close()  # waits for the writes
    return run.fitted()


def _run_step(step, has_state, has_key):
    """``step`` as ``fit`` takes it: ``(run, epoch_key, batch) -> (params, opt_state, state, loss)``,
    the model's state carried (None without one) and, with ``has_key``, the step's key folded from
    the epoch's and the batch's index."""

    def run_step(run, epoch_key, batch):
        carried = (*((run.state,) if has_state else ()), *((jax.random.fold_in(epoch_key, run.batch),) if has_key else ()))
        out = step(run.params, run.opt_state, *carried, *batch)
        return out if has_state else (out[0], out[1], None, out[2])

    return run_step


class _Run(NamedTuple):
    """Where a run of ``fit`` stands after a step: what a checkpoint holds. A new one after every
    step, never changed, so the last one handed out is whole wherever an interrupt lands."""
    params: Any
    opt_state: Any
    state: Any  # the model's (BatchNorm's statistics), None without one
    key: Any  # the data-order key that the epoch in progress is split from
    epoch: int  # the epoch in progress, from 1
    batch: int  # its batches done
    step: int  # optimizer updates done, in all
    epoch_losses: list  # its first `batch` entries: the losses of the epoch's batches done (the list only grows)
    history: tuple  # one record per finished epoch

    def fitted(self) -> Fitted:
        return Fitted(self.params, self.opt_state, list(self.history), self.state)


def _epochs(run, step, data, epochs, batch_size, mesh, evaluate_fn, log, progress) -> Iterator[_Run]:
    """Trains from ``run`` to the end of epoch ``epochs``, yielding the run after each step but an
    epoch's last, and after each epoch's record (which its last step completes)."""
    steps_per_epoch = len(data[0]) // batch_size
    while run.epoch <= epochs:
        next_key, epoch_key = jax.random.split(run.key)
        first, start, losses = run.batch, time.perf_counter(), run.epoch_losses[:run.batch]
        with _ProgressBar(progress, f"epoch {run.epoch}/{epochs}", steps_per_epoch, first, batch_size) as bar:
            for batch in batches(epoch_key, data, batch_size, drop_remainder=True, mesh=mesh, start=first):
                params, opt_state, state, loss = step(run, epoch_key, batch)
                losses.append(loss)
                run = run._replace(params=params, opt_state=opt_state, state=state, batch=run.batch + 1,
                                   step=run.step + 1, epoch_losses=losses)
                bar.update(loss)
                if run.batch < steps_per_epoch:
                    yield run
        mean_loss = float(jnp.mean(jnp.stack(losses)))  # waits for the last step
        seconds = time.perf_counter() - start
        record = {"epoch": run.epoch, "loss": mean_loss, "seconds": seconds,
                  "examples_per_second": (run.batch - first) * batch_size / seconds}
        metrics = {} if not evaluate_fn else evaluate_fn(run.params) if run.state is None else evaluate_fn(
            run.params, run.state)
        if set(metrics) & set(record):
            raise ValueError(f"`evaluate_fn`'s metrics {sorted(metrics)} must not reuse the names {sorted(record)}; "
                             f"prefix them, e.g. 'test_loss'.")
        record.update({name: _number(name, value) for name, value in metrics.items()})
        if log:
            log(" ".join(_format(name, value) for name, value in record.items()))
        run = run._replace(key=next_key, epoch=run.epoch + 1, batch=0, epoch_losses=[], history=(*run.history, record))
        yield run


def _number(name, value):
    """A metric as a Python int or float, as a history (and its JSON in a checkpoint) keeps it."""
    if np.ndim(value) != 0 or not np.issubdtype(np.asarray(value).dtype, np.number):
        raise TypeError(f"`evaluate_fn`'s metric {name!r} must be a number, got {value!r}.")
    return int(value) if np.issubdtype(np.asarray(value).dtype, np.integer) else float(value)


class _ProgressBar:
    """A tqdm bar over one epoch's examples, with the latest loss; nothing at all when not shown.
    The loss is read (a wait for the device) at most twice a second, so the steps still queue."""

    def __init__(self, show, description, steps, done, batch_size):
        self._bar = None
        if show or (show is None and sys.stderr.isatty()):
            import tqdm  # only when shown

            self._bar = tqdm.tqdm(total=steps * batch_size, initial=done * batch_size, desc=description, unit="ex",
                                  leave=False, dynamic_ncols=True)
        self._batch_size, self._shown = batch_size, 0.0

    def __enter__(self):
        return self

    def update(self, loss):
        if self._bar is None:
            return
        if time.monotonic() - self._shown >= 0.5:
            self._bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)
            self._shown = time.monotonic()
        self._bar.update(self._batch_size)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()


class _Checkpoints:
    """``fit``'s checkpoints: an Orbax ``CheckpointManager`` over a directory, one subdirectory per
    saved step, holding ``arrays`` (params and optimizer state, Orbax's standard PyTree format)
    and ``loop`` (JSON: the position, the data-order key, the epoch's losses so far, the history)."""

    def __init__(self, directory, max_to_keep, *, batch_size, examples):
        import orbax.checkpoint as ocp  # only when checkpointing: it takes a second to import

        max_to_keep = None if max_to_keep is None else _positive_int(max_to_keep, "max_to_keep")
        self._ocp, self._batch_size, self._examples = ocp, batch_size, examples
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
                                                 cleanup_tmp_directories=True),  # the remains of interrupted writes
            item_handlers={"arrays": ocp.StandardCheckpointHandler(), "loop": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def path(self, step) -> str:
        return os.fspath(self._manager.directory / str(step))

    def save(self, run):
        key_data = jax.random.key_data(run.key) if _is_typed_key(run.key) else run.key
        losses = run.epoch_losses[:run.batch]  # as Python floats, which hold float32, float64 and bfloat16 exactly
        loop = {"epoch": run.epoch, "batch": run.batch, "step": run.step, "key": np.asarray(key_data).tolist(),
                "epoch_losses": [float(loss) for loss in losses],
                "loss_dtype": np.dtype(losses[0].dtype).name if losses else None,
                "history": list(run.history), "batch_size": self._batch_size, "examples": self._examples}
        self._manager.save(run.step, args=self._ocp.args.Composite(
            arrays=self._ocp.args.StandardSave(_arrays(run)), loop=self._ocp.args.JsonSave(loop)))

    def restore(self, step, run, *, epochs) -> _Run:
        """``run`` as checkpoint ``step`` left it, its arrays placed as ``run``'s are."""
        where = self.path(step)
        loop = self._manager.restore(step, args=self._ocp.args.Composite(loop=self._ocp.args.JsonRestore())).loop
        for name, value, saved in (("batch_size", self._batch_size, loop["batch_size"]),
                                   ("examples", self._examples, loop["examples"])):
            if value != saved:
                what = f"`batch_size` {value}" if name == "batch_size" else f"`data` of {value} examples"
                raise ValueError(f"the checkpoint {where!r} was made with {name} {saved}, not the {what} given: a run "
                                 f"resumes with the data and batch size it started with (or pass an empty `checkpoint_dir`).")
        reached = loop["epoch"] - (loop["batch"] == 0)  # the epochs begun: at batch 0, the one in progress is not
        if reached > epochs:
            raise ValueError(f"the checkpoint {where!r} has trained past epoch {epochs}, the `epochs` given (it is at "
                             f"epoch {loop['epoch']}, batch {loop['batch']}); pass epochs >= {reached}.")
        like = _arrays(run)
        self._check_like(step, like, where)
        arrays = self._manager.restore(step, args=self._ocp.args.Composite(
            arrays=self._ocp.args.StandardRestore(jax.tree_util.tree_map(_abstract, like)))).arrays
        key = jnp.asarray(np.asarray(loop["key"], np.uint32))
        key = jax.random.wrap_key_data(key, impl=jax.random.key_impl(run.key)) if _is_typed_key(run.key) else key
        losses = [jnp.asarray(loss, loop["loss_dtype"]) for loss in loop["epoch_losses"]]
        return run._replace(params=arrays["params"], opt_state=arrays["opt_state"], state=arrays.get("state"),
                            key=key, epoch=loop["epoch"],
                            batch=loop["batch"], step=loop["step"], epoch_losses=losses, history=tuple(loop["history"]))

    def _check_like(self, step, like, where):
        """Refuses a checkpoint whose arrays differ from ``like``'s in path, shape or dtype (Orbax
        would cast a dtype silently), naming the first, params before the optimizer state."""
        arrays = lambda tree: {path: leaf for path, leaf in self._ocp.tree.to_flat_dict(tree).items()
                               if hasattr(leaf, "shape")}
        saved = arrays(self._manager.item_metadata(step).arrays)
        wanted = arrays(self._ocp.tree.serialize_tree(like, keep_empty_nodes=True))
        describe = lambda leaf: "nothing" if leaf is None else f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}"
        order = {"params": 0, "opt_state": 1, "state": 2}
        for path in sorted(saved.keys() | wanted.keys(), key=lambda path: (order[path[0]], str(path))):
            if describe(saved.get(path)) != describe(wanted.get(path)):
                which = {"params": "`params`", "opt_state": "the optimizer state", "state": "the model's `state`"}[path[0]]
                raise ValueError(f"the checkpoint {where!r} does not fit {which}: at {'/'.join(map(str, path))} it "
                                 f"holds {describe(saved.get(path))}, where {which} has {describe(wanted.get(path))}. "
                                 f"Resume with the model and optimizer it was made with, or pass an empty "
                                 f"`checkpoint_dir`.")

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def _arrays(run) -> dict:
    """What a checkpoint's ``arrays`` item holds: the params, the optimizer state and the model's state."""
    return {"params": run.params, "opt_state": run.opt_state, **({} if run.state is None else {"state": run.state})}


def _abstract(leaf):
    """Where a restored array goes: ``leaf``'s shape, dtype and sharding (the first local device for
    a leaf not yet on one)."""
    sharding = leaf.sharding if isinstance(leaf, jax.Array) else jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf), sharding=sharding)


def _is_typed_key(key):
    """Whether ``key`` is a typed key (``jax.random.key``) rather than raw ``uint32`` data (``PRNGKey``)."""
    return isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _format(name, value):
    if name == "epoch":
        return f"epoch {value:3d}"
    if name == "examples_per_second":
        return f"{value:,.0f} ex/s"
    if name == "seconds":
        return f"{value:.2f}s"
    return f"{name} {value:.4f}"
