"""The public contract: every operation of DESIGN.md is exported, has its twin, and is a custom_vjp."""
import jax
import jax.numpy as jnp
import pytest

import purebp
from purebp import reference

X = jnp.ones((2, 4, 4, 3))
P = [{"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}]
CALLS = {  # one call of each op, on arguments it accepts
    "sigmoid": (jnp.ones(3),), "relu": (jnp.ones(3),), "tanh": (jnp.ones(3),),
    "softmax": (jnp.ones((2, 3)),), "log_softmax": (jnp.ones((2, 3)),),
    "binary_cross_entropy": (jnp.full(3, 0.5), jnp.ones(3)),
    "sigmoid_binary_cross_entropy": (jnp.ones(3), jnp.ones(3)),
    "softmax_cross_entropy": (jnp.ones((2, 3)), jnp.ones((2, 3))),
    "softmax_cross_entropy_with_integer_labels": (jnp.ones((2, 3)), jnp.zeros(2, jnp.int32)),
    "squared_error": (jnp.ones(3), jnp.ones(3)), "l2_loss": (jnp.ones(3), jnp.ones(3)),
    "dense": (jnp.ones((2, 3)), jnp.ones((3, 2)), jnp.ones(2)),
    "mlp": (P, jnp.ones((2, 3))),
    "conv": (X, jnp.ones((3, 3, 3, 5))), "conv_transpose": (X, jnp.ones((3, 3, 3, 5))),
    "zero_pad": (X, 1), "max_pool": (X, 2), "avg_pool": (X, 2),
}


@pytest.mark.parametrize("name", CALLS)
def test_op_is_a_custom_vjp_with_a_twin(name):
    op = getattr(purebp, name)
    assert callable(getattr(reference, name))
    jaxpr = jax.make_jaxpr(lambda: op(*CALLS[name]))()  # static arguments stay Python values
    assert "custom_vjp_call" in str(jaxpr), f"{name} is not traced through a jax.custom_vjp"


def test_no_public_function_shadows_a_module():
    """``import purebp.<module> as m`` gives the module, and its functions are reachable through it."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(purebp.__path__):
        imported = importlib.import_module(f"purebp.{module.name}")
        assert getattr(purebp, module.name, imported) is imported, f"purebp.{module.name} is not the module"
    assert purebp.convolution.conv_transpose is purebp.conv_transpose
