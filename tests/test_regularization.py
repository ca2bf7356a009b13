"""dropout: flax.linen.Dropout's mask and scaling, its VJP against the twin, the rates at the ends,
residuals, bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import residual_bytes
from op_examples import check_first_order

KEYS = [pytest.param(jax.random.PRNGKey(3), id="raw-key"), pytest.param(jax.random.key(3), id="typed-key")]


class FlaxKey(nn.Module):
    """The key flax.linen.Dropout draws its mask from, when applied at the root with these rngs."""

    @nn.compact
    def __call__(self):
        return self.make_rng("dropout")


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_equals_flax_dropout_for_flax_own_key(rate, rng):
    x = jnp.asarray(rng.standard_normal((16, 33)), jnp.float32)
    key = jax.random.PRNGKey(7)
    theirs = nn.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(purebp.dropout(x, FlaxKey().apply({}, rngs={"dropout": key}), rate), theirs)


@pytest.mark.parametrize("key, shape", [pytest.param(KEYS[0].values[0], (4, 9), id="raw-key-4x9"),
                                        pytest.param(KEYS[1].values[0], (2, 3, 17), id="typed-key-2x3x17")])
def test_vjp_matches_reference(shape, key, dtype, rng):
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    check_first_order(lambda x, k: purebp.dropout(x, k, 0.3), lambda x, k: reference.dropout(x, k, 0.3), x, key)


def test_keeps_about_one_minus_rate_and_the_gradient_is_the_same_mask_scaled():
    x = jnp.ones((256, 256))
    y, vjp = jax.vjp(lambda x: purebp.dropout(x, jax.random.key(0), 0.25), x)
    assert abs(float((y != 0).mean()) - 0.75) < 0.01
    np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0], y)  # m / (1 − rate), the forward's own


@pytest.mark.parametrize("rate, deterministic, expected", [
    pytest.param(0.0, False, "x", id="rate-0"), pytest.param(0.7, True, "x", id="deterministic"),
    pytest.param(1.0, False, "zeros", id="rate-1")])
def test_the_ends(rate, deterministic, expected, rng):
    x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    y, vjp = jax.vjp(lambda x: purebp.dropout(x, jax.random.key(0), rate, deterministic=deterministic), x)
    g = jnp.ones_like(x)
    np.testing.assert_array_equal(y, x if expected == "x" else 0)
    np.testing.assert_array_equal(vjp(g)[0], g if expected == "x" else 0)


def test_keeps_the_mask_as_bits_alone():
    x = jnp.zeros((64, 128))
    kept = residual_bytes(lambda x: purebp.dropout(x, jax.random.key(0), 0.1), x)
    assert kept == x.size // 8  # one bit an element
    assert kept < residual_bytes(lambda x: reference.dropout(x, jax.random.key(0), 0.1), x)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda: purebp.dropout(jnp.ones(3), jax.random.key(0), 1.5), ValueError,
                 r"`rate` must be a probability in \[0, 1\] \(of dropping an element\), got 1.5", id="rate-above-1"),
    pytest.param(lambda: purebp.dropout(jnp.ones(3), jax.random.key(0), jnp.float32(0.5)), TypeError,
                 "`rate` must be a real number", id="rate-array"),
    pytest.param(lambda: purebp.dropout(jnp.ones(3), jax.random.key(0), 0.5, deterministic=0), TypeError,
                 "`deterministic` must be a bool, got 0", id="deterministic-int"),
    pytest.param(lambda: purebp.dropout(jnp.arange(3), jax.random.key(0), 0.5), TypeError,
                 "`x` must have a floating-point dtype", id="integer-x"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
