"""Data parallelism on JAX's own sharding: every device of the process, and two processes.

The module needs several devices: on one (the README's ``pytest`` on a CPU) it skips as a whole,
keeping the default run short, and ``.ci/run`` runs it with eight simulated devices, which must be
set before JAX is imported, and demands them::

    PUREBP_EXPECT_DEVICES=8 XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/test_distributed.py

There, data-parallel training equals the one-device run within float rounding (float32 and
float64), a per-device ``shard_map`` step with an explicit ``pmean`` equals the jitted one, and
every op gives the same values and gradients sharded as unsharded.
"""
import functools
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import purebp
from purebp import layers, reference, training
from purebp.checkpoint import load_params
from op_examples import EXAMPLES, WITH_PARAMS, cast, cotangent_for, dot, draw, floating_argnums, roles

import multihost_worker

DEVICES = jax.device_count()
TESTS = pathlib.Path(__file__).parent
several_devices = pytest.mark.skipif(
    DEVICES < 2, reason="needs several devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (.ci/run does)")
pytestmark = several_devices


@pytest.fixture
def mesh():
    return training.data_parallel_mesh()


@pytest.fixture(params=[jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit], ids=["auto", "explicit"])
def any_mesh(request):
    """The data-parallel mesh with Auto axes (XLA propagates shardings) and Explicit ones (sharding in types)."""
    return training.data_parallel_mesh(axis_type=request.param)


def test_sees_the_devices_ci_asks_for():
    """Keeps the eight-device run of .ci/run from silently running on one device."""
    expected = os.environ.get("PUREBP_EXPECT_DEVICES")
    if expected is None:
        pytest.skip("PUREBP_EXPECT_DEVICES is not set")
    assert DEVICES == int(expected), f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r} gave {jax.devices()}"


def test_mesh_spans_every_device(mesh):
    assert dict(mesh.shape) == {"batch": DEVICES} and set(mesh.devices.flat) == set(jax.devices())
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    explicit = training.data_parallel_mesh(axis_type=jax.sharding.AxisType.Explicit)
    assert explicit.axis_types == (jax.sharding.AxisType.Explicit,) and explicit.devices.tolist() == mesh.devices.tolist()
    mine = training.data_parallel_mesh(jax.devices()[::-1], axis_name="data")
    assert dict(mine.shape) == {"data": DEVICES} and list(mine.devices.flat) == jax.devices()[::-1]
    with pytest.raises(ValueError, match="`devices` must list at least one device, got none"):
        training.data_parallel_mesh([])
    with pytest.raises(TypeError, match=r"`devices` must hold jax devices .* got \[0, 1\]"):
        training.data_parallel_mesh([0, 1])
    with pytest.raises(TypeError, match="`axis_name` must be a string, got 0"):
        training.data_parallel_mesh(axis_name=0)
    with pytest.raises(TypeError, match="`axis_type` must be a jax.sharding.AxisType .* got 'explicit'"):
        training.data_parallel_mesh(axis_type="explicit")


def test_batches_are_split_along_the_batch_axis(mesh):
    x, y = np.arange(48.0, dtype=np.float32).reshape(24, 2), np.arange(24, dtype=np.int32)
    batch_size = 2 * DEVICES
    placed = list(training.batches(jax.random.PRNGKey(0), (x, y), batch_size, mesh=mesh, drop_remainder=True))
    plain = list(training.batches(jax.random.PRNGKey(0), (x, y), batch_size, drop_remainder=True))
    assert len(placed) == len(plain) == 24 // batch_size
    for (px, py), (bx, by) in zip(placed, plain):
        for array, expected in ((px, bx), (py, by)):
            assert array.sharding.spec == P("batch") and array.shape == expected.shape
            assert len(array.addressable_shards) == DEVICES and len(array.sharding.device_set) == DEVICES
            assert all(s.data.shape == (2,) + expected.shape[1:] for s in array.addressable_shards)
            np.testing.assert_array_equal(np.asarray(array), expected)  # the same rows, only placed
            rows = sorted((s.index[0].start, s.device) for s in array.addressable_shards)
            assert [device for _, device in rows] == list(mesh.devices.flat)  # device k holds rows 2k, 2k+1
    by_hand = training.shard_batch(plain[0], mesh)
    assert all(a.sharding == b.sharding for a, b in zip(by_hand, placed[0]))
    state = training.replicate({"w": jnp.ones(3)}, mesh)
    assert state["w"].sharding.spec == P() and state["w"].sharding.is_fully_replicated
    assert len(state["w"].addressable_shards) == DEVICES


def test_batch_axis_and_mesh_are_checked(mesh):
    loss = lambda p, x: jnp.mean(x * p)
    with pytest.raises(ValueError, match=r"`batch_axis` must name distinct axes of `mesh` \('batch',\), got 'data'"):
        training.make_train_step(loss, optax.sgd(0.1), mesh=mesh, batch_axis="data")
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh, .* got 'cpu'"):
        training.shard_batch(np.zeros(4), "cpu")
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
        next(training.batches(None, (np.zeros(4),), 2, mesh=jax.devices()))
    two_axes = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(1, DEVICES), ("replica", "data"))
    assert training.shard_batch(np.zeros(DEVICES), two_axes).sharding.spec == P(("replica", "data"))
    assert training.shard_batch(np.zeros(DEVICES), two_axes, batch_axis="data").sharding.spec == P("data")


@several_devices
def test_batch_size_must_split_over_the_devices(mesh):
    odd = DEVICES + 1
    x = np.zeros((4 * DEVICES, 3), np.float32)
    message = (rf"`batch_size` \({odd} examples\) must be divisible by the {DEVICES} devices that split it along mesh "
               rf"axis 'batch' of {{'batch': {DEVICES}}}; use a multiple of {DEVICES}, e.g. {DEVICES} or {2 * DEVICES}")
    with pytest.raises(ValueError, match=message):
        next(training.batches(None, (x,), odd, mesh=mesh))
    with pytest.raises(ValueError, match=rf"`batch_size` \({2 * DEVICES}\) leaves a last batch of {DEVICES + 1} of the "
                                         rf"{3 * DEVICES + 1} examples, which the {DEVICES} devices of `mesh` cannot "
                                         r"split evenly; pass drop_remainder=True"):
        next(training.batches(None, (x[:3 * DEVICES + 1],), 2 * DEVICES, mesh=mesh))
    kept = training.batches(None, (x[:3 * DEVICES + 1],), 2 * DEVICES, shuffle=False, drop_remainder=True, mesh=mesh)
    assert len(list(kept)) == 1
    with pytest.raises(ValueError, match=rf"`batch` \({odd} examples\) must be divisible by the {DEVICES} devices"):
        training.shard_batch((x[:odd], x[:odd]), mesh)
    step = training.make_train_step(lambda p, x: jnp.mean(x * p), optax.sgd(0.1), mesh=mesh)
    with pytest.raises(ValueError, match=rf"`batch` \({odd} examples\) must be divisible by the {DEVICES} devices"):
        step(jnp.ones(3), optax.sgd(0.1).init(jnp.ones(3)), x[:odd])
    with pytest.raises(ValueError, match=r"`batch` arrays must share their leading dim, got lengths \[8, 16\]"):
        training.shard_batch((x[:8], x[:16]), mesh)


def mlp_problem(dtype):
    """The MLP through ``purebp.mlp`` (one VJP for the whole network) on a 10-class problem."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(dtype)
    y = (np.abs(x[:, :5]).argmax(1) * 2 + (x[:, 5] > 0)).astype(np.int32)
    return layers.MLP((32, 10), activation="sigmoid", param_dtype=dtype), x, y


def cnn_problem(dtype):
    """The CNN of examples/train_data_parallel.py, narrower: ZeroPad, Conv, Relu, MaxPool, Conv, AvgPool, Flatten, Dense."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype(dtype)
    y = (x[:, :4, :4].mean((1, 2, 3)) * 10 % 10).astype(np.int32)
    model = layers.serial(layers.ZeroPad(1), layers.Conv(6, 3, padding="VALID", param_dtype=dtype), layers.Relu(),
                          layers.MaxPool(2), layers.Conv(8, 3, param_dtype=dtype), layers.Relu(), layers.AvgPool(2),
                          layers.Flatten(), layers.Dense(10, param_dtype=dtype))
    return model, x, y


PROBLEMS = {"mlp": mlp_problem, "cnn": cnn_problem}
TOLERANCE = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-13}}
# On one device the float64 runs and the CNN's shard_map step add little but time.
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64", marks=several_devices)]


def setup(problem, dtype):
    model, x, y = PROBLEMS[problem](dtype)
    _, params = model.init(jax.random.PRNGKey(0), x.shape)

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    return params, loss, x, y


def train(step, params, optimizer, x, y, mesh=None, epochs=2):
    """``epochs`` of ``step`` over (x, y) in shuffled batches of 16: 8 steps; returns params and losses."""
    opt_state, losses = optimizer.init(params), []
    for epoch in range(epochs):
        for batch in training.batches(jax.random.PRNGKey(epoch), (x, y), 16, mesh=mesh):
            params, opt_state, loss = step(params, opt_state, *batch)
            losses.append(float(loss))
    return params, losses


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_data_parallel_training_equals_one_device(problem, dtype, any_mesh):
    mesh = any_mesh
    with jax.enable_x64(dtype == np.float64):
        params, loss, x, y = setup(problem, dtype)
        optimizer = optax.sgd(0.05, momentum=0.9)
        one, one_losses = train(training.make_train_step(loss, optimizer), params, optimizer, x, y)
        many, many_losses = train(training.make_train_step(loss, optimizer, mesh=mesh),
                                  training.replicate(params, mesh), optimizer, x, y, mesh=mesh)
        assert all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == DEVICES
                   for leaf in jax.tree_util.tree_leaves(many))
        assert jax.tree_util.tree_leaves(many)[0].dtype == dtype
        chex.assert_trees_all_close(many, one, **TOLERANCE[dtype])
        np.testing.assert_allclose(many_losses, one_losses, **TOLERANCE[dtype])
        assert loss(many, x, y) < loss(params, x, y)  # it trained


def cnn_reference(params, x):
    """``cnn_problem``'s model from the reference twins, over the same params: JAX's autodiff of it is the oracle."""
    _, conv1, _, _, conv2, _, _, _, dense = params
    x = reference.max_pool(reference.relu(reference.conv(reference.zero_pad(x, 1), conv1["w"], conv1["b"])), 2)
    x = reference.avg_pool(reference.relu(reference.conv(x, conv2["w"], conv2["b"], padding="SAME")), 2)
    return reference.dense(x.reshape(x.shape[0], -1), dense["w"], dense["b"])


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(compiled_text):
    """How many of each collective a compiled program runs (an op's result type may hold spaces)."""
    return {kind: len(re.findall(rf" {kind}(-start)?\(", compiled_text)) for kind in COLLECTIVES}


@several_devices
def test_the_step_all_reduces_the_gradients_once(any_mesh):
    """purebp's step and autodiff's of the twins compile to the same collectives: one all-reduce (XLA
    combines the gradients' into one), nothing gathered, in both modes. numpy batches, so the step
    must place them itself: under Explicit axes an unplaced batch would be typed whole, gathered."""
    params, loss, x, y = setup("cnn", np.float32)
    twin = lambda p, x, y: reference.softmax_cross_entropy_with_integer_labels(cnn_reference(p, x), y).mean()
    optimizer = optax.sgd(0.05, momentum=0.9)
    for fn in (loss, twin):
        step = training.make_train_step(fn, optimizer, mesh=any_mesh)
        compiled = step.lower(params, optimizer.init(params), x[:16], y[:16]).compile().as_text()
        assert collectives(compiled) == {"all-reduce": 1, "all-gather": 0, "reduce-scatter": 0, "all-to-all": 0,
                                         "collective-permute": 0}
    alone = training.make_train_step(loss, optimizer).lower(params, optimizer.init(params), x[:16], y[:16])
    assert sum(collectives(alone.compile().as_text()).values()) == 0


def test_fit_with_a_mesh_equals_fit_without(any_mesh):
    params, loss, x, y = setup("mlp", np.float32)
    kwargs = dict(key=jax.random.PRNGKey(3), epochs=2, batch_size=16, log=None)
    one, _, one_history = training.fit(loss, params, (x, y), **kwargs)
    many, _, many_history = training.fit(loss, params, (x, y), mesh=any_mesh, **kwargs)
    chex.assert_trees_all_close(many, one, **TOLERANCE[np.float32])
    assert many_history[-1]["loss"] == pytest.approx(one_history[-1]["loss"], rel=1e-5)
    assert jax.tree_util.tree_leaves(many)[0].sharding.is_fully_replicated


def test_jax_make_mesh_explicit_axes_train_as_auto_ones(mesh):
    """``jax.make_mesh`` makes Explicit axes by default; the step runs them as they are, to the same numbers."""
    params, loss, x, y = setup("cnn", np.float32)
    yours = jax.make_mesh((DEVICES,), ("data",))
    assert yours.axis_types == (jax.sharding.AxisType.Explicit,)
    kwargs = dict(key=jax.random.PRNGKey(3), epochs=1, batch_size=16, log=None)
    trained = training.fit(loss, params, (x, y), mesh=yours, **kwargs).params
    chex.assert_trees_all_close(trained, training.fit(loss, params, (x, y), mesh=mesh, **kwargs).params, **TOLERANCE[np.float32])
    placed = training.shard_batch(x[:16], yours)
    assert placed.sharding.spec == P("data") and placed.sharding.mesh.devices.tolist() == yours.devices.tolist()
    assert jax.typeof(placed).sharding.spec == P("data", None, None, None)  # the split is in the type
    assert jax.typeof(trained[1]["w"]).sharding.spec == P(None, None, None, None)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_fsdp_training_equals_one_device(problem, any_mesh):
    """``shard_params`` splits every weight over the batch axis; the step keeps them split and trains
    to the one-device numbers."""
    params, loss, x, y = setup(problem, np.float32)
    optimizer = optax.sgd(0.05, momentum=0.9)
    one, one_losses = train(training.make_train_step(loss, optimizer), params, optimizer, x, y)
    sharded = training.shard_params(params, any_mesh)
    many, many_losses = train(training.make_train_step(loss, optimizer, mesh=any_mesh), sharded, optimizer, x, y,
                              mesh=any_mesh)
    chex.assert_trees_all_close(many, one, **TOLERANCE[np.float32])
    np.testing.assert_allclose(many_losses, one_losses, **TOLERANCE[np.float32])
    placement = lambda tree: jax.tree_util.tree_map(lambda a: a.sharding, tree)
    assert placement(many) == placement(sharded)
    fitted = training.fit(loss, sharded, (x, y), key=jax.random.PRNGKey(3), epochs=1, batch_size=16, log=None,
                          mesh=any_mesh).params
    assert placement(fitted) == placement(sharded)


@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_a_run_resumes_onto_the_mesh_with_its_shardings(any_mesh, fsdp, tmp_path):
    """fit's Orbax checkpoints hold arrays placed on 8 devices; a resumed run restores them onto the
    shardings its params have (replicated, or split by shard_params) and ends as the straight run."""
    params, loss, x, y = setup("mlp", np.float32)
    params = training.shard_params(params, any_mesh) if fsdp else params
    kwargs = dict(key=jax.random.PRNGKey(3), batch_size=16, log=None, mesh=any_mesh)
    straight = training.fit(loss, params, (x, y), epochs=2, **kwargs)
    training.fit(loss, params, (x, y), epochs=1, checkpoint_dir=tmp_path, **kwargs)
    restored = training.fit(loss, params, (x, y), epochs=1, checkpoint_dir=tmp_path, **kwargs)  # nothing to train
    placement = lambda tree: jax.tree_util.tree_map(lambda a: a.sharding, tree)
    assert placement(restored.params) == placement(straight.params)
    assert placement(restored.opt_state) == placement(straight.opt_state)
    assert all(isinstance(sharding, NamedSharding) and sharding.mesh == any_mesh
               for sharding in jax.tree_util.tree_leaves(placement((restored.params, restored.opt_state))))
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(restored.params)) == fsdp
    resumed = training.fit(loss, params, (x, y), epochs=2, checkpoint_dir=tmp_path, **kwargs)
    jax.tree_util.tree_map(np.testing.assert_array_equal, (resumed.params, resumed.opt_state),
                           (straight.params, straight.opt_state))


def test_shard_params_splits_weights_over_their_input_features(mesh):
    tree = {"w": np.zeros((2 * DEVICES, 3)), "kernel": np.zeros((3, 3, DEVICES, 5)), "b": np.zeros(2 * DEVICES),
            "odd": np.zeros((2 * DEVICES + 1, 4)), "scalar": np.zeros(())}
    placed = training.shard_params(tree, mesh)
    assert {name: leaf.sharding.spec for name, leaf in placed.items()} == {
        "w": P("batch", None), "kernel": P(None, None, "batch", None), "b": P(),
        "odd": P("batch", None) if DEVICES == 1 else P(), "scalar": P()}  # one device divides every dim
    two_axes = jax.make_mesh((1, DEVICES), ("replica", "data"))
    assert training.shard_params(tree, two_axes, axis="data")["w"].sharding.spec == P("data", None)
    with pytest.raises(ValueError, match=r"`axis` must name one of the axes \('replica', 'data'\) .* got None"):
        training.shard_params(tree, two_axes)
    with pytest.raises(ValueError, match=r"`axis` must name an axis of `mesh` \('batch',\), got 'model'"):
        training.shard_params(tree, mesh, axis="model")


@pytest.mark.parametrize("examples", [64, 61], ids=["even", "padded"])
def test_evaluate_over_a_mesh_equals_one_device(examples, any_mesh):
    """Data-parallel evaluation; a last batch the devices cannot split is padded and the padding left out."""
    params, _, x, y = setup("cnn", np.float32)
    model = cnn_problem(np.float32)[0]
    kwargs = dict(loss_fn=purebp.softmax_cross_entropy_with_integer_labels, batch_size=24)
    one = training.evaluate(model.apply, params, x[:examples], y[:examples], **kwargs)
    many = training.evaluate(model.apply, training.shard_params(params, any_mesh), x[:examples], y[:examples],
                             mesh=any_mesh, **kwargs)
    assert many["accuracy"] == one["accuracy"] and many["loss"] == pytest.approx(one["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="`inputs` must hold at least one example, got none"):
        training.evaluate(model.apply, params, x[:0], y[:0], mesh=any_mesh, **kwargs)


def shard_map_step(loss_fn, optimizer, mesh, axis="batch"):
    """The data-parallel step written per device: local gradients, then an explicit all-reduce."""

    def per_device(params, opt_state, x, y):
        local = jax.lax.pcast(params, axis, to="varying")  # each device differentiates on its own rows
        loss, grads = jax.value_and_grad(loss_fn)(local, x, y)
        loss, grads = jax.lax.pmean((loss, grads), axis)  # equal shards: the mean of means is the mean
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(axis), P(axis)), out_specs=P()))


@pytest.mark.parametrize("problem", ["mlp", pytest.param("cnn", marks=several_devices)])
def test_shard_map_step_with_pmean_equals_the_jitted_step(problem, mesh):
    params, loss, x, y = setup(problem, np.float32)
    optimizer = optax.sgd(0.05, momentum=0.9)
    jitted, jitted_losses = train(training.make_train_step(loss, optimizer, mesh=mesh), params, optimizer, x, y,
                                  mesh=mesh)
    mapped, mapped_losses = train(shard_map_step(loss, optimizer, mesh), params, optimizer, x, y, mesh=mesh)
    chex.assert_trees_all_close(mapped, jitted, **TOLERANCE[np.float32])
    np.testing.assert_allclose(mapped_losses, jitted_losses, **TOLERANCE[np.float32])


# Every op on a batch of DEVICES times its example's leading dim, split over the devices.
SHARD_MAP_OPTIONS = {"log_softmax": {"axis": -1}}  # the example normalises over axis 0, the batch axis


def op_case(name, options=None):
    """(op with its options bound, float32 arguments with the batch split, their shardings, a cotangent)."""
    args = draw(name, seed=1, batch=(DEVICES,), batched=("input",))
    args = tuple(jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), arg) if role == "input" else arg
                 for arg, role in zip(args, roles(name)))  # fold the devices' copies into the leading dim
    fn = functools.partial(getattr(purebp, name), **{**EXAMPLES[name].options, **(options or {})})
    args = cast(args, np.float32)
    return fn, args, cotangent_for(fn, args)


def close(actual, expected):
    chex.assert_trees_all_close(actual, expected, rtol=2e-5, atol=2e-6)


@several_devices
@pytest.mark.parametrize("name", EXAMPLES)
def test_op_under_sharded_jit(name, mesh):
    fn, args, cotangent = op_case(name)
    argnums = floating_argnums(args)
    grad = jax.grad(lambda *a: dot(fn(*a), cotangent), argnums)
    split, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    shardings = tuple(split if role == "input" else replicated for role in roles(name))
    close(jax.jit(fn, in_shardings=shardings)(*args), jax.jit(fn)(*args))
    close(jax.jit(grad, in_shardings=shardings)(*args), jax.jit(grad)(*args))


# Under shard_map each device draws the mask of its own rows from the key it is given, so dropout's
# value is not the whole batch's, and batch_norm takes the statistics of its own rows unless given
# the axis_name: each tested on its own below.
DRAWS_PER_DEVICE = {"dropout", "batch_norm"}
SHARD_MAP_CASES = [name for name in EXAMPLES if name not in DRAWS_PER_DEVICE]


@several_devices
@pytest.mark.parametrize("name", SHARD_MAP_CASES)
def test_op_under_shard_map(name, mesh):
    """Per device: the op on its rows, gradients of the replicated params all-reduced by hand."""
    fn, args, cotangent = op_case(name, SHARD_MAP_OPTIONS.get(name))
    argnums, is_input = floating_argnums(args), [role == "input" for role in roles(name)]

    def per_device(cotangent, *args):
        args = [a if input_ else jax.lax.pcast(a, "batch", to="varying") for a, input_ in zip(args, is_input)]
        value = fn(*args)
        grads = jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums)(*args)
        return value, tuple(g if is_input[i] else jax.lax.psum(g, "batch") for i, g in zip(argnums, grads))

    specs = [P("batch") if input_ else P() for input_ in is_input]
    mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), *specs),
                                   out_specs=(P("batch"), tuple(specs[i] for i in argnums))))
    value, grads = mapped(cotangent, *args)
    close(value, jax.jit(fn)(*args))
    close(grads, jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums))(*args))


def replicated_case(name, replicated):
    """``op_case`` with the arguments whose indices are in ``replicated`` left whole (``P()``) in
    shard_map, each device's copy ``DEVICES`` times the example's leading dim; and the same op on
    the whole batch outside shard_map, those arguments tiled once per device, as the oracle."""
    args = draw(name, seed=1, batch=(DEVICES,), batched=("input",))
    args = cast(tuple(jax.tree_util.tree_map(
        lambda a: a[0] if i in replicated else a.reshape((-1,) + a.shape[2:]), arg) if role == "input" else arg
        for i, (arg, role) in enumerate(zip(args, roles(name)))), np.float32)
    specs = tuple(P() if role == "param" or i in replicated else P("batch") for i, role in enumerate(roles(name)))
    tile = lambda a: jnp.tile(a, (DEVICES,) + (1,) * (a.ndim - 1))
    whole = lambda *a: tuple(tile(x) if i in replicated else x for i, x in enumerate(a))
    return args, specs, whole


@several_devices
def test_dropout_under_shard_map_draws_each_devices_rows_from_its_key(mesh):
    """Each device's rows, dropped with the key it holds: the op on each shard alone, value and gradient."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2 * DEVICES, 8)), jnp.float32)
    key = jax.random.key(5)
    local = lambda x, key: jax.value_and_grad(lambda x: jnp.sum(jnp.sin(purebp.dropout(x, key, 0.3))))(x)
    value, grad = jax.jit(jax.shard_map(lambda x, key: tuple(jnp.reshape(a, (1, *a.shape)) for a in local(x, key)),
                                        mesh=mesh, in_specs=(P("batch"), P()), out_specs=P("batch")))(x, key)
    for device, rows in enumerate(np.split(np.asarray(x), DEVICES)):
        alone = local(jnp.asarray(rows), key)
        close(value[device], alone[0])
        close(grad[device], alone[1])


@several_devices
@pytest.mark.parametrize("op", [purebp.batch_norm, reference.batch_norm], ids=["purebp", "twin"])
def test_batch_norm_with_axis_name_under_shard_map_is_the_whole_batchs(op, mesh):
    """axis_name="batch": the statistics, the backward's means and the running statistics of the
    whole batch, on every device; value and gradients (of x, γ, β, through y and the new statistics)
    those of one device with the whole batch."""
    fn, args, cotangent = op_case("batch_norm")
    y_cotangent, stats_cotangent = cotangent
    over_devices = functools.partial(op, **EXAMPLES["batch_norm"].options, axis_name="batch")
    specs = (P("batch"), P(), P(), P())

    def per_device(y_cotangent, *args):
        # the new statistics are the same on every device: their cotangent enters once, on one of them
        first = jax.lax.axis_index("batch") == 0
        ct = (y_cotangent, jax.tree_util.tree_map(lambda c: jnp.where(first, c, 0), stats_cotangent))
        return over_devices(*args), jax.grad(lambda *a: dot(over_devices(*a), ct), (0, 1, 2))(*args)

    mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), *specs),
                                   out_specs=((P("batch"), P()), (P("batch"), P(), P()))))
    value, grads = mapped(y_cotangent, *args)
    close(value, jax.jit(fn)(*args))
    close(grads, jax.jit(jax.grad(lambda *a: dot(fn(*a), cotangent), (0, 1, 2)))(*args))


def test_batch_norm_under_grad_of_vmap_with_axis_name_says_to_differentiate_inside():
    x = jnp.ones((2, 3, 4))
    stats = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
    each = lambda x: jnp.sum(purebp.batch_norm(x, None, None, stats, train=True, axis_name="group")[0] ** 3)
    np.testing.assert_allclose(jax.vmap(jax.grad(each), axis_name="group")(x), 0, atol=1e-6)  # constant rows
    with pytest.raises(ValueError, match=r"jax.vmap\(jax.grad\(...\), axis_name='group'\) rather than jax.grad"):
        jax.grad(lambda x: jax.vmap(each, axis_name="group")(x).sum())(x)


@pytest.mark.parametrize("name", [name for name in WITH_PARAMS if name not in DRAWS_PER_DEVICE])
def test_op_under_shard_map_with_replicated_params(name, mesh):
    """The weights replicated (invariant), the batch split (varying), no cast: each rule sums the
    weights' cotangents over the devices, as JAX's autodiff does. Runs on one device too, where the
    mesh axis is still manual and the types still differ."""
    fn, args, cotangent = op_case(name)
    argnums, specs = floating_argnums(args), [P("batch") if role == "input" else P() for role in roles(name)]
    twin = functools.partial(getattr(reference, name), **EXAMPLES[name].options)
    per_device = lambda ct, *a: jax.grad(lambda *b: jnp.sum(fn(*b) * ct), argnums)(*a)
    grads = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), *specs),
                                  out_specs=tuple(specs[i] for i in argnums)))(cotangent, *args)
    close(grads, jax.jit(jax.grad(lambda *a: jnp.sum(twin(*a) * cotangent), argnums))(*args))


TWO_OPERAND_LOSSES = tuple(name for name in EXAMPLES if name not in WITH_PARAMS and len(EXAMPLES[name].args) == 2)


@pytest.mark.parametrize("replicated", [0, 1], ids=["replicated-first", "replicated-second"])
@pytest.mark.parametrize("name", TWO_OPERAND_LOSSES)
def test_loss_under_shard_map_with_one_operand_replicated(name, replicated, mesh):
    """E.g. labels shared by every device: their cotangent is summed over the devices."""
    args, specs, whole = replicated_case(name, {replicated})
    fn = functools.partial(getattr(purebp, name), **EXAMPLES[name].options)
    twin = functools.partial(getattr(reference, name), **EXAMPLES[name].options)
    argnums = floating_argnums(args)
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(jax.eval_shape(fn, *whole(*args)).shape),
                            np.float32)
    per_device = lambda ct, *a: jax.grad(lambda *b: jnp.sum(fn(*b) * ct), argnums)(*a)
    grads = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("batch"), *specs),
                                  out_specs=tuple(specs[i] for i in argnums)))(cotangent, *args)
    close(grads, jax.grad(lambda *a: jnp.sum(twin(*whole(*a)) * cotangent), argnums)(*args))


def test_shard_map_cotangents_are_summed_only_where_the_types_differ(mesh):
    """The psum is in the shard_map jaxpr (on one device too), absent outside it and under check_vma=False."""
    x, w, b = jnp.ones((2 * DEVICES, 3)), jnp.ones((3, 4)), jnp.ones(4)
    grad = jax.grad(lambda x, w, b: purebp.dense(x, w, b).sum(), (0, 1, 2))
    assert "psum" not in str(jax.make_jaxpr(grad)(x, w, b))
    checked = jax.shard_map(grad, mesh=mesh, in_specs=(P("batch"), P(), P()), out_specs=(P("batch"), P(), P()))
    assert str(jax.make_jaxpr(checked)(x, w, b)).count("psum") == 2  # w̄ and b̄; x̄ varies as x does
    unchecked = jax.shard_map(grad, mesh=mesh, in_specs=(P("batch"), P(), P()),
                              out_specs=(P("batch"), P("batch"), P("batch")), check_vma=False)
    assert "psum" not in str(jax.make_jaxpr(unchecked)(x, w, b))  # local gradients, yours to pmean
    _, dw, db = unchecked(x, w, b)
    assert dw.shape == (3 * DEVICES, 4) and db.shape == (4 * DEVICES,)  # one per device, stacked
    np.testing.assert_allclose(dw, 2.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    """Two processes under jax.distributed.initialize over loopback, two CPU devices each (gloo collectives)."""
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}  # gRPC would use one
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    port, worker = free_port(), str(TESTS / "multihost_worker.py")
    processes = [subprocess.Popen([sys.executable, worker, str(port), str(i), str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [process.communicate(timeout=240)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for i, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i} failed:\n{output[-4000:]}"

    for i in range(2):
        facts = json.loads((tmp_path / f"process_{i}.json").read_text())
        assert facts == {
            "process_index": i, "process_count": 2, "device_count": 4, "local_device_count": 2,
            "mesh_shape": {"batch": 4}, "batch_shape": [16, 12], "batch_spec": "P('batch',)",
            "addressable_shards": 2, "own_rows_by_batches": True, "own_rows_by_shard_batch": True,
            "step_losses": facts["step_losses"], "params_replicated": True}
        assert facts["step_losses"][0] == facts["step_losses"][1]  # both placements are the same batch
    first, second = (load_params(tmp_path / f"process_{i}.npz") for i in range(2))
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, second)
    one_process = multihost_worker.fit(*multihost_worker.problem())
    chex.assert_trees_all_close(first, one_process, **TOLERANCE[np.float32])


def test_example_trains_over_every_device(mesh):
    sys.path.insert(0, str(TESTS.parent / "examples"))
    import train_data_parallel

    lines = []
    result = train_data_parallel.run(epochs=1, batch_size=32, mesh=mesh, log=lines.append)
    assert lines[0] == (f"mesh {{'batch': {DEVICES}}}: {DEVICES} cpu device(s) in 1 process(es); "
                        f"batch 32 = {32 // DEVICES} per device")
    assert "examples/s" in lines[-1] and result["examples_per_second"] > 0
    assert result["test_accuracy"] > 0.5
    if DEVICES > 1:  # the same run on one device, 42 steps
        alone = train_data_parallel.run(epochs=1, batch_size=32, mesh=training.data_parallel_mesh(jax.devices()[:1]),
                                        log=lambda line: None)
        chex.assert_trees_all_close(result["params"], alone["params"], rtol=1e-4, atol=1e-5)


def test_batch_norm_and_dropout_train_on_the_mesh_as_on_one_device(any_mesh, rng):
    """make_train_step(mesh=...) sees the global batch: BatchNorm's statistics are the whole batch's,
    and the dropout masks are drawn for the whole batch from the one key, so 8 devices train as 1."""
    x = jnp.asarray(rng.standard_normal((64, 6, 6, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 64), jnp.int32)
    model = layers.serial(layers.Conv(4, 3), layers.BatchNorm(momentum=0.9), layers.Relu(), layers.Flatten(),
                          layers.Dropout(0.25), layers.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), x.shape)

    def loss(params, state, key, x, y):
        logits, state = model.apply(params, x, state=state, key=key, train=True)
        return purebp.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    kwargs = dict(key=jax.random.PRNGKey(3), epochs=2, batch_size=16, log=None, state=model.init_state(x.shape),
                  has_key=True)
    one = training.fit(loss, params, (x, y), **kwargs)
    many = training.fit(loss, params, (x, y), mesh=any_mesh, **kwargs)
    chex.assert_trees_all_close((many.params, many.state), (one.params, one.state), **TOLERANCE[np.float32])
    assert jax.tree_util.tree_leaves(many.state)[0].sharding.is_fully_replicated


@several_devices
def test_attention_with_a_bias_and_lengths_under_shard_map(mesh, rng):
    """The batch split, a bias per head replicated: its cotangent summed over the devices, as autodiff's."""
    q, k, v = (jnp.asarray(rng.standard_normal((DEVICES, 5, 4, 3)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.standard_normal((4, 5, 5)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, 6, DEVICES), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    def grads(op):
        loss = lambda q, k, v, bias, lengths, ct: jnp.sum(op(q, k, v, bias, key_value_seq_lengths=lengths,
                                                             is_causal=True) * ct)
        return jax.grad(loss, (0, 1, 2, 3))

    specs = (P("batch"), P("batch"), P("batch"), P(), P("batch"), P("batch"))
    blocked = lambda *a, **o: purebp.dot_product_attention(*a, **o, query_block=2, key_block=2)
    mapped = jax.jit(jax.shard_map(grads(blocked), mesh=mesh, in_specs=specs,
                                   out_specs=(P("batch"), P("batch"), P("batch"), P())))
    close(mapped(q, k, v, bias, lengths, cotangent), jax.jit(grads(reference.dot_product_attention))(
        q, k, v, bias, lengths, cotangent))
