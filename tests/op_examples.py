"""The tests' shared helpers: one small valid call of every operation of DESIGN.md (the op table that
test_transforms, test_dtypes and test_sharding run over) and the tree assertion they use.

``EXAMPLES`` maps each op's name to its ``Example``: how to draw each positional argument from a
seeded numpy generator, and the static options passed by keyword. Each argument has a role:
``"input"`` (data, labels) or ``"param"`` (weights and biases), so a test can add a batch axis to
the inputs alone (vmap over inputs, scan over a stack of inputs) or to the params alone. Float
arguments are drawn in float64 and cast by ``cast`` to the dtype under test; integer labels stay
int32. max_pool's input holds distinct values that every float type represents exactly, so its
first maximum, and with it every derivative, is the same in every dtype.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

import purebp
from purebp import reference
from purebp.testing import check_vjp


class Arg(NamedTuple):
    draw: Callable  # (rng, batch shape) -> numpy array or pytree of them
    role: str = "input"  # "input" or "param"


class Example(NamedTuple):
    args: tuple[Arg, ...]
    options: dict  # static options, passed by keyword
    constants: tuple[int, ...] = ()  # floating args the op stops gradients at by contract (batch_norm's stats)


def normal(*shape, role="input", scale=1.0):
    return Arg(lambda rng, batch: scale * rng.standard_normal(batch + shape), role)


def uniform(*shape, low=0.0, high=1.0):
    return Arg(lambda rng, batch: rng.uniform(low, high, batch + shape))


def distribution(*shape):
    """Label probabilities along the last axis: positive rows that sum to one."""
    def draw(rng, batch):
        e = np.exp(rng.standard_normal(batch + shape))
        return e / e.sum(-1, keepdims=True)
    return Arg(draw)


def class_index(*shape, classes):
    return Arg(lambda rng, batch: rng.integers(0, classes, batch + shape).astype(np.int32))


def distinct(*shape):
    """A permutation of k/16, |k| < 128, per example: distinct, and exact in bfloat16 (8 bits)."""
    size = int(np.prod(shape))
    assert size <= 256, "k/16 with |k| < 128 is exact in bfloat16"

    def draw(rng, batch):
        count = int(np.prod(batch, dtype=int))
        return np.stack([(rng.permutation(size) - size // 2) / 16 for _ in range(count)]).reshape(batch + shape)
    return Arg(draw)


def mlp_params(*sizes):
    """``[{"w": [in, out], "b": [out]}, ...]`` with w scaled by 1/sqrt(in)."""
    def draw(rng, batch):
        return [{"w": rng.standard_normal(batch + (m, n)) / np.sqrt(m), "b": rng.standard_normal(batch + (n,))}
                for m, n in zip(sizes[:-1], sizes[1:])]
    return Arg(draw, "param")


def running_stats(channels):
    """batch_norm's ``{"mean", "var"}``: a mean and a positive variance per channel."""
    return Arg(lambda rng, batch: {"mean": rng.standard_normal(batch + (channels,)),
                                   "var": rng.uniform(0.5, 2.0, batch + (channels,))}, "param")


EXAMPLES = {
    "sigmoid": Example((normal(3, 4, scale=2.0),), {}),
    "relu": Example((normal(3, 4),), {}),
    "tanh": Example((normal(3, 4),), {}),
    "gelu": Example((normal(3, 4, scale=2.0),), {}),
    "silu": Example((normal(3, 4, scale=2.0),), {}),
    "softplus": Example((normal(3, 4, scale=3.0),), {}),
    "log_sigmoid": Example((normal(3, 4, scale=3.0),), {}),
    "leaky_relu": Example((normal(3, 4),), {"negative_slope": 0.2}),
    "softmax": Example((normal(3, 5, scale=2.0),), {}),
    "log_softmax": Example((normal(4, 3, scale=2.0),), {"axis": 0}),
    "binary_cross_entropy": Example((uniform(3, 4, low=0.05, high=0.95), uniform(3, 4)), {}),
    "sigmoid_binary_cross_entropy": Example((normal(3, 4, scale=2.0), uniform(3, 4)), {}),
    "softmax_cross_entropy": Example((normal(3, 5, scale=2.0), distribution(3, 5)), {}),
    "softmax_cross_entropy_with_integer_labels": Example((normal(3, 5, scale=2.0), class_index(3, classes=5)), {}),
    "squared_error": Example((normal(3, 4), normal(3, 4)), {}),
    "l2_loss": Example((normal(3, 4), normal(3, 4)), {}),
    "layer_norm": Example((normal(3, 5, scale=2.0), normal(5, role="param"), normal(5, role="param")), {}),
    "rms_norm": Example((normal(3, 5, scale=2.0), normal(5, role="param")), {}),
    "batch_norm": Example((normal(6, 4, scale=2.0), normal(4, role="param"), normal(4, role="param"), running_stats(4)),
                          {"train": True, "momentum": 0.9}, constants=(3,)),
    "embedding": Example((class_index(3, 4, classes=7), normal(7, 5, role="param")), {}),
    # the key as a param: replicated across devices and shared by a batch, as a model's dropout key is
    "dropout": Example((normal(3, 8), Arg(lambda rng, batch: np.broadcast_to(np.array([0, 42], np.uint32), batch + (2,)),
                                          "param")), {"rate": 0.3}),
    "dot_product_attention": Example((normal(2, 5, 4, 3), normal(2, 6, 2, 3), normal(2, 6, 2, 3)),
                                     {"query_block": 2, "key_block": 4}),  # causal: test_attention's
    "dense": Example((normal(3, 4), normal(4, 5, role="param", scale=0.5), normal(5, role="param")), {}),
    "mlp": Example((mlp_params(4, 6, 3), normal(3, 4)), {"activation": "tanh", "output_activation": "sigmoid"}),
    "conv": Example((normal(2, 6, 6, 3), normal(3, 3, 3, 4, role="param", scale=0.2), normal(4, role="param")),
                    {"stride": 2, "padding": "SAME"}),
    "conv_transpose": Example((normal(2, 3, 3, 4), normal(3, 3, 4, 2, role="param", scale=0.2),
                               normal(2, role="param")), {"stride": 2, "padding": "SAME"}),
    "zero_pad": Example((normal(2, 4, 4, 3),), {"padding": ((1, 2), (0, 1))}),
    "max_pool": Example((distinct(2, 5, 5, 3),), {"window": 3, "stride": 2}),  # overlapping windows
    "avg_pool": Example((normal(2, 5, 5, 3),), {"window": 2, "stride": 1, "padding": "SAME",
                                                "count_include_pad": False}),
}
WITH_PARAMS = tuple(name for name, example in EXAMPLES.items() if any(a.role == "param" for a in example.args))


def roles(name):
    return tuple(arg.role for arg in EXAMPLES[name].args)


def draw(name, seed=0, batch=(), batched=("input", "param")):
    """numpy arguments of ``name``'s example; those whose role is in ``batched`` get ``batch`` in front."""
    rng = np.random.default_rng(seed)
    return tuple(arg.draw(rng, tuple(batch) if arg.role in batched else ()) for arg in EXAMPLES[name].args)


def cast(args, dtype):
    """jnp arrays: floating leaves in ``dtype`` (rounded to it), integer leaves as they are."""
    def leaf(x):
        x = np.asarray(x)
        return jnp.asarray(x, dtype) if np.issubdtype(x.dtype, np.floating) else jnp.asarray(x)
    return jax.tree_util.tree_map(leaf, args)


def op(name):
    """purebp's op with the example's static options bound."""
    return functools.partial(getattr(purebp, name), **EXAMPLES[name].options)


def twin(name):
    """The reference twin with the same options bound."""
    return functools.partial(getattr(reference, name), **EXAMPLES[name].options)


def cotangent_for(fn, args, seed=2):
    """A random cotangent of ``fn(*args)``'s output (a tree of them for batch_norm's ``(y, stats)``)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda out: jnp.asarray(rng.standard_normal(out.shape), out.dtype),
                                  jax.eval_shape(fn, *args))


def dot(output, cotangent):
    """⟨output, cotangent⟩ over every leaf: the scalar whose gradient is the VJP of ``cotangent``."""
    return sum(jnp.sum(o * c) for o, c in zip(jax.tree_util.tree_leaves(output), jax.tree_util.tree_leaves(cotangent)))


def floating_argnums(args):
    """Positions of the arguments whose leaves are all floating point (all but integer labels)."""
    return tuple(i for i, a in enumerate(args)
                 if all(jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in jax.tree_util.tree_leaves(a)))


def of_floats(fn, args):
    """``fn`` as a function of the floating arguments of ``args`` alone (integer labels stay bound),
    and those arguments: ``jax.vjp(*of_floats(fn, args))``."""
    argnums = floating_argnums(args)
    return (lambda *floats: fn(*(floats[argnums.index(i)] if i in argnums else a for i, a in enumerate(args))),
            tuple(args[i] for i in argnums))


def assert_trees_close(actual, expected, rtol, atol=None):
    """chex's tree check, leaf by leaf in float64, with ``|a − e| ≤ rtol·|e| + atol·max|e|`` (``atol``
    defaults to ``rtol``): the second term, relative to the leaf's largest element, keeps entries that
    cancel to near zero from failing on rounding alone. Structures and shapes must be equal; dtypes
    may differ (a half-precision result against its float64 reference)."""
    atol = rtol if atol is None else atol
    chex.assert_trees_all_equal_shapes(actual, expected)

    def leaf(a, e):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        chex.assert_trees_all_close(a, e, rtol=rtol, atol=atol * float(np.max(np.abs(e), initial=0.0)))
    jax.tree_util.tree_map(leaf, actual, expected)


# The modules' grids vary an op's shapes and options for its first-order rule; check_vjp's other
# parts (second order, vmap, each argument and output alone, the float32 truth of low precision)
# run over the op table once, in test_transforms. PUREBP_CHECK_VJP=defaults runs every grid case at
# check_vjp's defaults as well (about twice the grids' time).
FIRST_ORDER = {} if os.environ.get("PUREBP_CHECK_VJP") == "defaults" else {
    "order": 1, "vmap": False, "each_alone": False, "float32_reference": False}


def check_first_order(fn, reference, *args, **options):
    """``check_vjp`` as the modules' grids use it: see ``FIRST_ORDER``."""
    check_vjp(fn, reference, *args, **{**FIRST_ORDER, **options})
