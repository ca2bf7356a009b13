"""Every op and layer under JAX's sharding, in both mesh modes: Auto axes and Explicit ("sharding in types").

Under ``jax.set_mesh`` of a mesh with Explicit axes (``jax.make_mesh``'s default) each array's
type names the mesh axes its dims are split over, and a custom_vjp's cotangents must carry their
primals' types. Here every op's ``jit(grad)`` is held against its reference twin's (JAX's own
autodiff) in value *and* in sharding type: data parallel (the batch split, weights replicated),
FSDP (the weights split over the batch axis too) and tensor parallel (a 4×2 ``("data", "model")``
mesh, dense's ``w`` split over ``"model"``). The compiled steps' collectives are counted, so that
a change that adds one shows.

Like ``test_distributed.py``, the module needs several devices and skips as a whole on one (the
README's ``pytest`` on a CPU); ``.ci/run`` runs it on eight simulated devices, where the splits are real.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

import purebp
from purebp import layers, reference
from op_examples import EXAMPLES, WITH_PARAMS, cast, cotangent_for, dot, draw, floating_argnums, roles

DEVICES = jax.device_count()
several_devices = pytest.mark.skipif(
    DEVICES < 8, reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (.ci/run does)")
pytestmark = pytest.mark.skipif(
    DEVICES < 2, reason="needs several devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (.ci/run does)")
MODES = [pytest.param(AxisType.Explicit, id="explicit"),
         pytest.param(AxisType.Auto, id="auto")]
TOLERANCE = {"rtol": 2e-5, "atol": 2e-6}


def batch_mesh(mode):
    return jax.make_mesh((DEVICES,), ("batch",), axis_types=(mode,))


def specs(tree):
    """The sharding type of every leaf, as seen by ``jax.typeof`` (what a custom_vjp's check compares)."""
    return [jax.typeof(leaf).sharding.spec for leaf in jax.tree_util.tree_leaves(tree)]


def value_and_grad(fn, argnums):
    """``jit`` of ``(fn(*args), grad of ⟨fn(*args), cotangent⟩ over argnums)``, the cotangent an argument."""
    return jax.jit(lambda ct, *a: (fn(*a), jax.grad(lambda *b: dot(fn(*b), ct), argnums)(*a)))


def op_case(name, options=None):
    """purebp's op and its twin with the example's options, float32 arguments with DEVICES times the
    example's batch, and a cotangent of the output's shape."""
    args = draw(name, seed=1, batch=(DEVICES,), batched=("input",))
    args = cast(tuple(jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), arg) if role == "input"
                      else arg for arg, role in zip(args, roles(name))), np.float32)
    batch_axis_kept = {"axis": -1} if name == "log_softmax" else {}  # the example normalises over axis 0, the batch
    options = {**EXAMPLES[name].options, **batch_axis_kept, **(options or {})}
    ours, twin = (functools.partial(getattr(module, name), **options) for module in (purebp, reference))
    return ours, twin, args, cotangent_for(ours, args)


def under_mesh(mesh, ours, twin, args, cotangent, argnums, placements):
    """Runs both under ``jax.set_mesh(mesh)`` with ``args`` placed by ``placements`` (PartitionSpecs);
    asserts that purebp's value and gradients equal the twin's in sharding type and in numbers, and
    that the numbers equal one device's. ``twin=None``: where the twin cannot run (a contraction JAX
    finds ambiguous), each gradient's type is held against its primal's instead. Returns purebp's
    (value, grads)."""
    close = functools.partial(np.testing.assert_allclose, **TOLERANCE)
    with jax.set_mesh(mesh):
        placed = jax.device_put(args, placements)
        placed_cotangent = jax.device_put(cotangent, jax.tree_util.tree_map(  # placed as the output
            lambda out: out.sharding, jax.jit(ours)(*placed)))
        mine = value_and_grad(ours, argnums)(placed_cotangent, *placed)
        if twin is not None:
            theirs = value_and_grad(twin, argnums)(placed_cotangent, *placed)
            assert specs(mine) == specs(theirs)
            jax.tree_util.tree_map(close, mine, theirs)
        else:
            assert specs(mine[1]) == specs([placed[i] for i in argnums])
    if DEVICES > 1 or twin is None:
        jax.tree_util.tree_map(close, mine, value_and_grad(ours, argnums)(cotangent, *args))  # one device
    return mine


def data_parallel(name):
    """Inputs split along their batch dim, params replicated: PartitionSpecs for ``name``'s arguments."""
    return tuple(jax.tree_util.tree_map(lambda _: P("batch") if role == "input" else P(), arg)
                 for arg, role in zip(draw(name), roles(name)))


# The op table's options, and the pools' non-overlapping windows, whose backward interleaves phases
# by a reshape that Explicit axes refused until it was given an out_sharding.
CASES = [pytest.param(name, None, id=name) for name in EXAMPLES] + [
    pytest.param(pool, {"window": 2, "stride": None, "padding": "VALID"}, id=f"{pool}-2x2") for pool in ("max_pool", "avg_pool")]


# Twins whose JAX ops refuse a batch-split input under Explicit axes without an out_sharding, which
# a plain twin does not give: there each gradient's type is held against its primal's instead.
EXPLICIT_TWIN_REFUSES = {"embedding"}  # jnp.take's gather: "Use `.at[...].get(out_sharding=)`"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, options", CASES)
def test_op_data_parallel(name, options, mode):
    ours, twin, args, cotangent = op_case(name, options)
    twin = None if mode == AxisType.Explicit and name in EXPLICIT_TWIN_REFUSES else twin
    value, grads = under_mesh(batch_mesh(mode), ours, twin, args, cotangent, floating_argnums(args),
                              data_parallel(name))
    if mode == AxisType.Explicit:  # the batch stays split in the output and in every input's cotangent
        assert specs(value)[0][0] == "batch"
        inputs = [grads[i] for i, a in enumerate(floating_argnums(args)) if roles(name)[a] == "input"]
        assert all(spec[0] == "batch" for spec in specs(inputs))


def normal(rng, *shape):
    """float32 normals scaled by 1/sqrt(fan-in) for matrices and kernels, so activations stay O(1)."""
    return jnp.asarray(rng.standard_normal(shape) / np.sqrt(shape[0] if len(shape) > 1 else 1), np.float32)


def dense_case(rng, batch_spec, w_spec, b_spec):
    args = (normal(rng, 2 * DEVICES, 8), normal(rng, 8, 2 * DEVICES), normal(rng, 2 * DEVICES))
    return "dense", args, (batch_spec, w_spec, b_spec)


def mlp_case(rng, batch_spec, first, second):
    """Two layers: ``first`` and ``second`` give each layer's (w, b) PartitionSpecs."""
    widths = (8, 2 * DEVICES, 8)
    params = [{"w": normal(rng, m, n), "b": normal(rng, n)} for m, n in zip(widths[:-1], widths[1:])]
    layer_placements = [{"w": w, "b": b} for w, b in (first, second)]
    return "mlp", (params, normal(rng, 2 * DEVICES, 8)), (layer_placements, batch_spec)


def conv_case(rng, batch_spec, w_spec, b_spec):
    args = (normal(rng, 2 * DEVICES, 6, 6, DEVICES), 0.2 * normal(rng, 3, 3, DEVICES, 4), normal(rng, 4))
    return "conv", args, (batch_spec, w_spec, b_spec)


def model_parallel_case(table, name):
    """``table[name]``'s arguments and placements, the op and its twin, a cotangent and the argnums."""
    name, args, placements = table[name](np.random.default_rng(0))
    options = {"mlp": {"activation": "tanh"}, "conv": {"stride": 2, "padding": "SAME"}}.get(name, {})
    ours, twin = (functools.partial(getattr(module, name), **options) for module in (purebp, reference))
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(jax.eval_shape(ours, *args).shape), np.float32)
    return ours, twin, args, cotangent, floating_argnums(args), placements


# FSDP: the weights split over the batch axis too, each device keeping one slice of every weight,
# over their input features (the contracted dim) as `training.shard_params` places them, so that
# every output stays split as its input; biases replicated.
FSDP = {
    "dense": lambda rng: dense_case(rng, P("batch"), P("batch", None), P()),
    "mlp": lambda rng: mlp_case(rng, P("batch"), (P("batch", None), P()), (P("batch", None), P())),
    "conv": lambda rng: conv_case(rng, P("batch"), P(None, None, "batch", None), P()),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FSDP)
def test_fsdp_weights_split_over_the_batch_axis(name, mode):
    ours, twin, args, cotangent, argnums, placements = model_parallel_case(FSDP, name)
    mesh = batch_mesh(mode)
    if name == "conv" and mode == AxisType.Explicit:
        twin = None  # lax.conv_general_dilated takes a split kernel only with an out_sharding, which the twin has not
    _, grads = under_mesh(mesh, ours, twin, args, cotangent, argnums, placements)
    if mode == AxisType.Explicit:  # each weight's cotangent is split as the weight is
        if name == "mlp":
            assert [specs(layer["w"]) for layer in grads[0]] == [[P("batch", None)]] * 2
        else:
            assert specs(grads[1]) == [placements[1]]


def model_mesh(mode):
    """A 2-D ``("data", "model")`` mesh: 4×2 on eight devices, 1×1 on one."""
    shape = (DEVICES // 2, 2) if DEVICES > 1 else (1, 1)
    return jax.make_mesh(shape, ("data", "model"), axis_types=(mode, mode))


# Tensor parallelism: dense's output features split over "model"; the MLP as Megatron's pair, the
# first layer split by columns (its outputs), the second by rows (its inputs, a contraction over
# "model" in the forward and in the backward).
TENSOR_PARALLEL = {
    "dense": lambda rng: dense_case(rng, P("data"), P(None, "model"), P("model")),
    "mlp": lambda rng: mlp_case(rng, P("data"), (P(None, "model"), P("model")), (P("model", None), P())),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TENSOR_PARALLEL)
def test_tensor_parallel_weights_split_over_a_model_axis(name, mode):
    ours, twin, args, cotangent, argnums, placements = model_parallel_case(TENSOR_PARALLEL, name)
    mesh = model_mesh(mode)
    if name == "mlp" and mode == AxisType.Explicit:
        twin = None  # the twin's row-parallel `a @ w` contracts over "model" on both sides: JAX asks for an out_sharding
    value, grads = under_mesh(mesh, ours, twin, args, cotangent, argnums, placements)
    if mode == AxisType.Explicit and name == "dense":
        assert specs(value) == [P("data", "model")]  # the output features stay split over the model axis
        assert specs(grads) == [P("data", None), P(None, "model"), P("model")]


def test_outside_a_mesh_the_rules_add_no_sharding_ops():
    """No mesh, no Auto-axes mesh: the backward rules' jaxprs hold no reshard, sharding constraint or
    psum, so a program built from them compiles as it did before sharding types (the rules pass
    ``out_sharding`` of an empty mesh, which JAX drops)."""
    for name in EXAMPLES:
        ours, _, args, cotangent = op_case(name)
        text = str(jax.make_jaxpr(value_and_grad(ours, floating_argnums(args)))(cotangent, *args))
        assert not any(primitive in text for primitive in ("reshard", "sharding_constraint", "psum")), name


def every_layer():
    """One model through every layer constructor, and a batch of DEVICES × 2 images."""
    model = layers.serial(
        layers.ZeroPad(1), layers.Conv(4, 3, padding="VALID"), layers.Relu(), layers.MaxPool(2),
        layers.ConvTranspose(4, 3, stride=2), layers.Tanh(), layers.AvgPool(2), layers.Conv(4, 1, groups=2, use_bias=False),
        layers.Sigmoid(), layers.Flatten(), layers.MLP((6, 5), activation="relu"), layers.Dense(5),
        layers.LogSoftmax(), layers.Softmax())
    x = np.random.default_rng(0).uniform(size=(2 * DEVICES, 8, 8, 2)).astype(np.float32)
    return model, model.init(jax.random.PRNGKey(0), x.shape)[1], x


@pytest.mark.parametrize("mode", MODES)
def test_every_layer_under_a_mesh(mode):
    """Grad of a loss through every layer, the batch split and the params replicated: each param's
    gradient is typed as the param, and equals one device's."""
    model, params, x = every_layer()
    loss = lambda params, x: jnp.mean(jnp.log(model.apply(params, x)[:, 0]))
    mesh = batch_mesh(mode)
    with jax.set_mesh(mesh):
        placed = jax.device_put((params, x), (P(), P("batch")))
        value, grads = jax.jit(jax.value_and_grad(loss))(*placed)
        assert specs(grads) == specs(placed[0])
    expected_value, expected = jax.jit(jax.value_and_grad(loss))(params, x)
    np.testing.assert_allclose(value, expected_value, **TOLERANCE)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, **TOLERANCE), grads, expected)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_params_never_placed_under_an_explicit_mesh(name):
    """The issue's snippet: params straight from init, only the batch placed. JAX types such an argument
    on no mesh, even under set_mesh; the rules take it whole on the context mesh, as autodiff does."""
    ours, twin, args, cotangent = op_case(name)
    argnums = floating_argnums(args)
    alone = value_and_grad(ours, argnums)(cotangent, *args)
    with jax.set_mesh(batch_mesh(AxisType.Explicit)):
        placed = tuple(jax.device_put(a, P("batch")) if role == "input" else a for a, role in zip(args, roles(name)))
        placed_cotangent = jax.device_put(cotangent, jax.tree_util.tree_map(
            lambda out: out.sharding, jax.jit(ours)(*placed)))  # placed as the output: split, or batch_norm's stats whole
        mine = value_and_grad(ours, argnums)(placed_cotangent, *placed)
        # JAX's own conv transpose and gather ask for an out_sharding here: the twin cannot run
        if not name.startswith("conv") and name not in EXPLICIT_TWIN_REFUSES:
            assert specs(mine) == specs(value_and_grad(twin, argnums)(placed_cotangent, *placed))
    params = [mine[1][i] for i, a in enumerate(argnums) if roles(name)[a] == "param"]
    assert all(all(entry is None for entry in spec) for spec in specs(params))  # whole, as they came
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, **TOLERANCE), mine, alone)
