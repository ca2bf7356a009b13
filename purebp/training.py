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
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, mesh: Mesh | None = None,
                    batch_axis: str | Sequence[str] | None = None) -> Callable:
    """Returns ``step(params, opt_state, *batch) -> (params, opt_state, loss)``, pure and jitted.

    With a ``mesh`` the step is data-parallel: it is jitted with ``in_shardings`` that split every
    batch array along its leading dim over ``batch_axis``. ``params`` and ``opt_state`` come back
    sharded as they went in: each leaf placed on ``mesh`` with a ``NamedSharding`` keeps it (FSDP,
    tensor parallelism), any other leaf (numpy, one device) is replicated. ``loss_fn`` still sees
    the whole batch, and XLA reduces its mean and the gradients across devices with its own
    collectives. One function rather than a separate data-parallel one, because the mesh changes
    where arrays live, not the step's arithmetic or signature: going from one device to many is
    one argument.

    Args:
      loss_fn: ``loss_fn(params, *batch)`` returning a scalar.
      optimizer: an optax gradient transformation, e.g. ``optax.sgd(0.1, momentum=0.9)``.
      mesh: optional ``jax.sharding.Mesh``, e.g. ``data_parallel_mesh()`` or ``jax.make_mesh``'s;
        None for one device. Auto axes let XLA place the collectives; Explicit axes (``jax.make_mesh``'s
        default) carry every array's sharding in its type, and the step is traced under
        ``jax.set_mesh(mesh)``.
      batch_axis: the mesh axis (or axes) that splits the batch; None means every axis of ``mesh``.

    Raises:
      TypeError: if ``mesh`` is not a ``jax.sharding.Mesh``.
      ValueError: if ``batch_axis`` names no axis of ``mesh``, or, when called, if a batch's
        leading dim does not divide evenly over the devices along ``batch_axis``.
    """

    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if mesh is None:
        return jax.jit(step)
    sharded, shards = _batch_sharding(mesh, batch_axis)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = {}  # one jitted step per placement of params and opt_state

    def placed(params, opt_state, batch):
        """The arguments on ``mesh`` and the step jitted for their placement. Every leaf is put where
        the step expects it first: under Explicit axes a jitted function types its arguments by where
        they are, not by its ``in_shardings``, and a batch typed whole would be gathered on every device."""
        for leaf in jax.tree_util.tree_leaves(batch):
            _check_divisible(np.shape(leaf)[0] if np.ndim(leaf) else 0, shards, "batch", sharded)
        state = _placements((params, opt_state), mesh)
        key = (jax.tree_util.tree_structure(state), tuple(jax.tree_util.tree_leaves(state)))
        if key not in jitted:
            # `batch` travels as one tuple so that one sharding covers however many arrays it holds.
            jitted[key] = jax.jit(lambda params, opt_state, batch: step(params, opt_state, *batch),
                                  in_shardings=(*state, sharded), out_shardings=(*state, replicated))
        params, opt_state = _put((params, opt_state), state)
        return jitted[key], (params, opt_state, _put(batch, jax.tree_util.tree_map(lambda _: sharded, batch)))

    @functools.wraps(step)
    def data_parallel_step(params, opt_state, *batch):
        jitted_step, args = placed(params, opt_state, batch)
        with jax.set_mesh(mesh):
            return jitted_step(*args)

    def lower(params, opt_state, *batch):
        jitted_step, args = placed(params, opt_state, batch)
        with jax.set_mesh(mesh):
            return jitted_step.lower(*args)

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
            mesh: Mesh | None = None, batch_axis: str | Sequence[str] | None = None) -> Iterator[tuple]:
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

    Raises:
      ValueError: if the arrays' lengths differ, ``batch_size`` is not positive, or, with a
        ``mesh``, ``batch_size`` or a kept last batch does not divide evenly over the devices
        along ``batch_axis``.
    """
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
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
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


def fit(loss_fn: Callable, params, data: Sequence, *, key, epochs: int, batch_size: int,
        optimizer: optax.GradientTransformation | None = None, learning_rate: float = 0.1,
        evaluate_fn: Callable | None = None, log: Callable[[str], None] | None = print, mesh: Mesh | None = None):
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
      mesh: optional ``jax.sharding.Mesh`` for data-parallel training: each batch of
        ``batch_size`` examples is split over all its devices (see ``batches``); params placed on
        ``mesh`` keep their sharding (``shard_params`` for FSDP), any others are replicated, the
        optimizer state follows them, and the returned params are placed as they were.

    Returns:
      ``(params, history)``: the trained parameters and one dict per epoch with ``epoch``,
      ``loss`` (the mean training loss), ``seconds``, ``examples_per_second`` and the metrics of
      ``evaluate_fn``.
    """
    if hasattr(data, "shape") or not isinstance(data, Sequence) or not all(hasattr(a, "shape") for a in data):
        got = f"an array of shape {data.shape}" if hasattr(data, "shape") else repr(type(data).__name__)
        raise TypeError(f"`data` must be a tuple of arrays that share their leading dim, e.g. (x, y), got {got}; "
                        f"pass (x, y).")
    epochs, batch_size = _positive_int(epochs, "epochs"), _positive_int(batch_size, "batch_size")
    if len(data[0]) < batch_size:
        raise ValueError(f"`batch_size` ({batch_size}) must not exceed the {len(data[0])} examples of `data`.")
    optimizer = optax.sgd(learning_rate, momentum=0.9) if optimizer is None else optimizer
    step = make_train_step(loss_fn, optimizer, mesh=mesh)
    if mesh is not None:  # leaves already on the mesh keep their sharding (shard_params), the rest are replicated
        params = _on_mesh(params, mesh)
    opt_state = optimizer.init(params)
    history = []
    for epoch in range(1, epochs + 1):
        key, epoch_key = jax.random.split(key)
        start, losses = time.perf_counter(), []
        for batch in batches(epoch_key, data, batch_size, drop_remainder=True, mesh=mesh):
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
