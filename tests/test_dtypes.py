"""Every op in float32, float64 (x64 on), bfloat16 and float16: dtypes kept, accuracy bounded.

For each op of ``op_examples``: the output has the input's dtype and every floating cotangent its
primal's (``jax.vjp`` with a ones cotangent), with x64 off and on; values and cotangents are within
``TOLERANCE`` of the float64 reference on the same inputs rounded to the dtype. Integer labels get
a float0 cotangent; float32 labels of half-precision logits are cast to the logits' dtype, their
cotangent staying float32.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from op_examples import EXAMPLES, assert_trees_close, cast, draw, floating_argnums, of_floats, op, twin

# Accuracy of every op, values and cotangents, against the float64 reference evaluated on the same
# inputs (already rounded to the dtype): elementwise
#     |got − want| ≤ atol · max|want| + rtol · |want|,
# with max|want| taken over the whole output (or cotangent), so atol is relative to its magnitude.
# Small multiples of the dtype's machine epsilon: the half types are computed (on CPU) at higher
# precision and rounded once, within ~1.3 eps; float32 and float64 show the reference's different
# summation order, within ~3 eps (mlp's weight cotangents).
TOLERANCE = {  # dtype: (rtol, atol)
    jnp.dtype(jnp.float64): (8 * 2.0**-52, 8 * 2.0**-52),  # 8 eps = 1.8e-15
    jnp.dtype(jnp.float32): (8 * 2.0**-23, 8 * 2.0**-23),  # 8 eps = 9.5e-7
    jnp.dtype(jnp.bfloat16): (4 * 2.0**-7, 4 * 2.0**-7),  # 4 eps = 3.1e-2
    jnp.dtype(jnp.float16): (4 * 2.0**-10, 4 * 2.0**-10),  # 4 eps = 3.9e-3
}

OPS = list(EXAMPLES)
DTYPES = [pytest.param(jnp.float32, id="f32"), pytest.param(jnp.float64, id="f64"),
          pytest.param(jnp.bfloat16, id="bf16"), pytest.param(jnp.float16, id="f16")]
HALF = [pytest.param(jnp.bfloat16, id="bf16"), pytest.param(jnp.float16, id="f16")]
# with x64 on, where a stray float64 constant would promote a narrower op; x64 off is also each dtype's
# in test_values_and_cotangents_within_tolerance, which checks the dtypes too
X64_MODES = [pytest.param(jnp.float32, False, id="f32"), pytest.param(jnp.float32, True, id="f32-x64"),
             pytest.param(jnp.float64, True, id="f64-x64"), pytest.param(jnp.bfloat16, True, id="bf16-x64"),
             pytest.param(jnp.float16, True, id="f16-x64")]


def value_and_vjp(f, args, cotangent):
    """(f(*args), the cotangents of its floating args for ``cotangent``, or ones if None)."""
    function, floats = of_floats(f, args)
    out, vjp_fn = jax.vjp(function, *floats)
    return out, vjp_fn(jax.tree_util.tree_map(jnp.ones_like, out) if cotangent is None else cotangent)


def random_cotangent(name, dtype):
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map(lambda out: jnp.asarray(rng.standard_normal(out.shape), dtype),
                                  jax.eval_shape(twin(name), *cast(draw(name), jnp.float32)))


def to_float64(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@functools.cache
def float64_reference(name):
    """The reference's jitted (value, cotangents): one compilation serves every dtype's rounded inputs."""
    return jax.jit(lambda args, cotangent: value_and_vjp(twin(name), args, cotangent))


def assert_within_tolerance(got, want, dtype):
    rtol, atol = TOLERANCE[jnp.dtype(dtype)]
    assert_trees_close(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), rtol, atol)  # (out, *cotangents)


def dtypes_of(tree):
    return [leaf.dtype for leaf in jax.tree_util.tree_leaves(tree)]


# --- dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, x64", X64_MODES)
@pytest.mark.parametrize("name", OPS)
def test_output_and_cotangents_keep_the_dtype(name, dtype, x64):
    """Traced only (eval_shape): the output has the input's dtype and each cotangent its primal's,
    whether x64 is on (no stray float64 constant may promote a half-precision op) or off."""
    with jax.enable_x64(x64):
        args = cast(draw(name), dtype)
        out, cotangents = jax.eval_shape(lambda a: value_and_vjp(op(name), a, None), args)
        assert dtypes_of(out) == [jnp.dtype(dtype)] * len(dtypes_of(out))
        primals = [args[i] for i in floating_argnums(args)]
        assert dtypes_of(cotangents) == dtypes_of(primals) == [jnp.dtype(dtype)] * len(dtypes_of(primals))


# --- accuracy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPS)
def test_values_and_cotangents_within_tolerance(name, dtype):
    """Output and cotangents (for a random cotangent) against the float64 reference on the same
    inputs rounded to ``dtype``, within ``TOLERANCE[dtype]``."""
    with jax.enable_x64(dtype == jnp.float64):
        args, cotangent = cast(draw(name), dtype), random_cotangent(name, dtype)
        got = jax.jit(lambda a, c: value_and_vjp(op(name), a, c))(args, cotangent)
    assert dtypes_of(got) == [jnp.dtype(dtype)] * len(dtypes_of(got))
    with jax.enable_x64(True):
        want = float64_reference(name)(to_float64(args), to_float64(cotangent))
    assert_within_tolerance(got, want, dtype)


# --- integer labels ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_labels_get_a_float0_cotangent(dtype):
    name = "softmax_cross_entropy_with_integer_labels"
    loss = lambda logits, labels: op(name)(logits, labels).sum()

    def grads(logits, labels):
        _, vjp_fn = jax.vjp(op(name), logits, labels)
        return (jax.grad(loss, argnums=(0, 1), allow_int=True)(logits, labels),
                vjp_fn(jnp.ones(labels.shape, logits.dtype)),
                jax.grad(loss)(logits, labels))  # the usual call: w.r.t. the logits alone

    with jax.enable_x64(dtype == jnp.float64):
        logits, labels = cast(draw(name), dtype)
        (d_logits, d_labels), vjp_cotangents, grad = jax.jit(grads)(logits, labels)
        assert d_labels.dtype == jax.dtypes.float0 and d_labels.shape == labels.shape
        assert d_logits.dtype == dtype
        assert [c.dtype for c in vjp_cotangents] == [dtype, jax.dtypes.float0]
        # grad w.r.t. the logits alone is a plain array in their dtype, with no float0 anywhere
        assert isinstance(grad, jax.Array) and grad.dtype == dtype and grad.shape == logits.shape
        assert (logits - 0.1 * grad).dtype == dtype  # usable in an update as it is
    with jax.enable_x64(True):
        want = jax.jit(jax.grad(lambda z: twin(name)(z, labels).sum()))(to_float64(logits))
    assert_within_tolerance(grad, want, dtype)
    np.testing.assert_array_equal(d_logits, grad)


# --- float32 labels with half-precision logits -------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", ["binary_cross_entropy", "sigmoid_binary_cross_entropy", "softmax_cross_entropy",
                                  "squared_error", "l2_loss"])
def test_float32_labels_are_cast_to_the_logits_dtype(name, dtype):
    """Labels (targets) in float32, logits (predictions) in half precision: the loss is computed in
    the logits' dtype on the labels rounded to it, and each cotangent comes back in its primal's dtype."""
    logits, labels = draw(name)
    logits, labels = cast(logits, dtype), cast(labels, jnp.float32)
    cotangent = random_cotangent(name, dtype)
    out, (d_logits, d_labels) = jax.jit(lambda a, c: value_and_vjp(op(name), a, c))((logits, labels), cotangent)
    assert (out.dtype, d_logits.dtype, d_labels.dtype) == (dtype, dtype, jnp.float32)
    with jax.enable_x64(True):  # the semantics: labels cast to the logits' dtype, then the op
        want = float64_reference(name)(to_float64((logits, labels.astype(dtype))), to_float64(cotangent))
    assert_within_tolerance((out, d_logits, d_labels), want, dtype)
