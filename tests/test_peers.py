"""The peers' options, with the peers' semantics: `where=` masks and `axis=` as jax.nn and optax, empty
arrays, and flax's pooling over any number of leading batch dims (DESIGN.md, "Labels, masks and batch
dims"). Values and gradients against jax.nn, optax and flax; the hand-written VJPs against the twins.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purebp
from purebp import reference
from op_examples import check_first_order

LOGITS = np.array([[5.5, 1.3, -4.2, 0.9, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0], [36.0, 1e4, 1.0, 2.0, -3.0]], np.float32)
CLASS_MASK = np.array([[1, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 1, 0]], bool)  # row 1 is masked out entirely
MASKS = [pytest.param(CLASS_MASK, id="classes"), pytest.param(CLASS_MASK[:1], id="broadcast"),
         pytest.param(None, id="no-mask")]
ROW_MASK = np.array([True, False, True])  # optax: a mask of the loss's shape masks whole rows
LABELS = np.array([0, 2, 1])  # row 2's label is a masked-out class: optax still takes its logit
PROBABILITIES = np.asarray(jax.nn.softmax(np.arange(15.0).reshape(3, 5) / 4), np.float32)

# name -> (purebp op, twin, peer, the args after the logits)
OPS = {
    "softmax": (purebp.softmax, reference.softmax, jax.nn.softmax, ()),
    "log_softmax": (purebp.log_softmax, reference.log_softmax, jax.nn.log_softmax, ()),
    "softmax_cross_entropy": (purebp.softmax_cross_entropy, reference.softmax_cross_entropy,
                              optax.softmax_cross_entropy, (PROBABILITIES,)),
    "integer_labels": (purebp.softmax_cross_entropy_with_integer_labels,
                       reference.softmax_cross_entropy_with_integer_labels,
                       optax.softmax_cross_entropy_with_integer_labels, (LABELS,)),
}
LOSSES = ["softmax_cross_entropy", "integer_labels"]


def finite(y):
    """-inf (a masked-out log-probability) as 0, so that a projection of it stays finite."""
    return jnp.where(jnp.isneginf(y), 0, y)


def projected_grad(fn, x):
    """The gradient of a fixed projection of ``fn(x)``: one cotangent that differs on every output."""
    def projection(x):
        y = finite(fn(x))
        return jnp.vdot(y, jnp.linspace(-1, 1, y.size).reshape(y.shape))
    return jax.jit(jax.grad(projection))(x)


def assert_matches_peer(name, x, **options):
    """Value and logits-gradient equal the peer's and the twin's (the hand-written VJP against two
    autodiffs: jax.nn's or optax's, and the twin's, which ``check_vjp`` holds the op to elsewhere)."""
    op, twin, peer, args = OPS[name]

    def on_logits(f):
        return jax.jit(lambda x: f(x, *args, **options))

    ours = on_logits(op)
    for oracle in (on_logits(peer), on_logits(twin)):
        # atol: optax forms logsumexp(z) − z_y, which rounds at the ulp of max z (5e-7 at 5.5); purebp doesn't
        np.testing.assert_allclose(ours(x), oracle(x), rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(projected_grad(ours, x), projected_grad(oracle, x), rtol=2e-6, atol=1e-7)


# --- where= masks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", MASKS)
@pytest.mark.parametrize("name", OPS)
def test_class_mask(name, where):
    assert_matches_peer(name, LOGITS, where=where)


@pytest.mark.parametrize("name", OPS)
def test_masked_vjp_matches_the_twin(name):
    """Every argument's cotangent, eager and jitted, for a random cotangent: the labels' too (0 where
    a class is masked out, where optax's is NaN)."""
    op, twin, _, args = OPS[name]
    check_first_order(lambda x, *a: finite(op(x, *a, where=CLASS_MASK)), lambda x, *a: finite(twin(x, *a, where=CLASS_MASK)),
              LOGITS, *args)


@pytest.mark.parametrize("name", LOSSES)
def test_row_mask(name):
    assert_matches_peer(name, LOGITS, where=ROW_MASK)
    assert OPS[name][0](LOGITS, *OPS[name][3], where=ROW_MASK)[1] == 0  # a masked-out row's loss is 0


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_masked_entries_as_jax_nn(name):
    """jax.nn's own tests: the unmasked entries are fn of them alone; an empty mask gives 0 (or -inf)."""
    op = OPS[name][0]
    x, m = LOGITS[0], CLASS_MASK[0]
    out = op(x, where=m)
    np.testing.assert_allclose(out[m], op(x[m]), rtol=1e-6)
    np.testing.assert_allclose((out if name == "softmax" else jnp.exp(out)).sum(), 1.0, rtol=1e-6)
    empty = op(x, where=np.zeros_like(m))
    np.testing.assert_array_equal(empty, np.zeros_like(x) if name == "softmax" else np.full_like(x, -np.inf))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_masked_entries_get_no_gradient(name):
    """jax issue 19490: a huge masked-out entry must not leak NaN or inf into the gradient."""
    x = jnp.array([36.0, 10000.0])
    grad = jax.grad(lambda x: OPS[name][0](x, where=x < 1000)[0])(x)
    np.testing.assert_array_equal(grad, np.zeros(2))


def test_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"`where` must broadcast to the input's shape \(3, 5\), got shape \(3, 4\)"):
        purebp.softmax(LOGITS, where=np.ones((3, 4), bool))


# --- axis= ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [pytest.param(0, id="0"), pytest.param((0, 1), id="both"),
                                  pytest.param(None, id="None")])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_axes(name, axis):
    assert_matches_peer(name, LOGITS[:2] / 4, axis=axis)


@pytest.mark.parametrize("where", [pytest.param(None, id="no-mask"), pytest.param("classes", id="classes")])
@pytest.mark.parametrize("name", LOSSES)
def test_loss_over_several_class_axes(name, where):
    """optax: a tuple of class axes, which an integer label indexes in row-major order."""
    logits = np.arange(24.0, dtype=np.float32).reshape(2, 3, 4) / 5
    mask = None if where is None else np.arange(24).reshape(2, 3, 4) % 5 != 1
    args = (np.array([5, 11]),) if name == "integer_labels" else (np.asarray(jax.nn.softmax(-logits, (1, 2))),)
    op, twin, peer, _ = OPS[name]
    np.testing.assert_allclose(op(logits, *args, axis=(1, 2), where=mask), peer(logits, *args, axis=(1, 2), where=mask),
                               rtol=1e-6)
    check_first_order(lambda x, *a: op(x, *a, axis=(1, 2), where=mask), lambda x, *a: twin(x, *a, axis=(1, 2), where=mask),
              logits, *args)


# --- empty arrays -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [pytest.param((0,), id="empty"), pytest.param((3, 0), id="no-classes"),
                                   pytest.param((0, 3), id="no-rows")])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmax_cross_entropy"])
def test_empty(name, shape):
    op, _, peer, _ = OPS[name]
    x = np.zeros(shape, np.float32)
    args = (x,) if name == "softmax_cross_entropy" else ()
    np.testing.assert_array_equal(op(x, *args), peer(x, *args))
    assert jax.grad(lambda x: op(x, *args).sum())(x).shape == shape


def test_integer_labels_of_no_examples():
    loss = purebp.softmax_cross_entropy_with_integer_labels(np.zeros((0, 3), np.float32), np.zeros(0, int))
    assert loss.shape == (0,)


# --- pools over any number of leading batch dims (flax) ----------------------------------------------


@pytest.mark.parametrize("shape", [pytest.param((6, 6, 2), id="no-batch"), pytest.param((3, 6, 6, 2), id="one"),
                                   pytest.param((2, 3, 6, 6, 2), id="two")])
@pytest.mark.parametrize("pool, flax_pool", [pytest.param(purebp.max_pool, nn.max_pool, id="max"),
                                             pytest.param(purebp.avg_pool, nn.avg_pool, id="avg")])
def test_pool_batch_dims(pool, flax_pool, shape):
    x = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # no ties
    ours = jax.jit(lambda x: pool(x, (3, 3), (2, 2), "SAME"))
    theirs = jax.jit(lambda x: flax_pool(x, (3, 3), (2, 2), "SAME"))
    np.testing.assert_array_equal(ours(x), theirs(x))
    np.testing.assert_allclose(projected_grad(ours, x), projected_grad(theirs, x), rtol=1e-6)


def test_pool_with_too_few_dims_for_its_window():
    with pytest.raises(ValueError, match=r"as many spatial dims as `window` \(2, 2\) .* got shape \(4, 4\)"):
        purebp.max_pool(np.zeros((4, 4), np.float32), (2, 2))
