"""Every op under JAX's transformations, held against the same computation on its reference twin.

jit (static options as static arguments), vmap over inputs and over params, an op inside a
``lax.scan`` body, ``jax.checkpoint``, grad of grad, and jacrev of jacrev (the Hessian), all
reverse mode. Forward mode cannot enter a ``jax.custom_vjp``: that JAX error is pinned here too.
The arguments of every op come from the one table in ``op_examples``.
"""
import functools
import json
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import purebp
from purebp.testing import check_grads, check_vjp, residual_bytes
import op_examples
from op_examples import EXAMPLES, WITH_PARAMS, cast, draw, floating_argnums, of_floats, op, roles, twin

OPS = list(EXAMPLES)  # ids are the op names
RTOL32 = 1e-4  # float32: reordered sums and fused rules differ from autodiff by a few hundred ulps
RTOL64 = 1e-9  # float64, for second derivatives
BATCH = 3
# JAX's own message when jvp meets a custom_vjp (jax/_src/custom_derivatives.py)
FORWARD_MODE_ERROR = r"can't apply forward-mode autodiff \(jvp\) to a custom_vjp function"


def assert_trees_close(actual, expected, rtol):
    """Same structure, shapes and dtypes; |a − e| ≤ rtol·|e| + rtol·max|e| leaf by leaf."""
    chex.assert_trees_all_equal_dtypes(actual, expected)
    op_examples.assert_trees_close(actual, expected, rtol)


def weights_for(fn, args, seed=1):
    """A fixed random weight of ``fn``'s output shape and dtype (each output's, for several), to make
    a scalar of the output."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda out: jnp.asarray(rng.standard_normal(out.shape), out.dtype),
                                  jax.eval_shape(fn, *args))


def scalar_of(fn, weight):
    """Σ weight · sin(fn(*args)) over every output: a scalar whose second derivative involves fn's
    first and second."""
    return lambda *args: sum(jnp.sum(w * jnp.sin(out)) for w, out in zip(
        jax.tree_util.tree_leaves(weight), jax.tree_util.tree_leaves(fn(*args))))


# --- the reference side, computed once per op and shared by the float32 tests ------------------
# Compilation dominates this file's time, so each expected value is compiled once: the plain
# call and the batched call of the twin serve jit, checkpoint, vmap and scan alike.


def example(name, batch=(), batched=()):
    """(args in float32, argnums, the loss weight of one call's output)."""
    args = cast(draw(name, batch=batch, batched=batched), jnp.float32)
    return args, floating_argnums(args), weights_for(twin(name), cast(draw(name), jnp.float32))


@functools.cache
def reference_call(name):
    """The twin's (output, (loss, grads)) on the example: what jit and checkpoint must give."""
    args, argnums, weight = example(name)
    ref = twin(name)
    return jax.jit(lambda *a: (ref(*a), jax.value_and_grad(scalar_of(ref, weight), argnums)(*a)))(*args)


def per_example(f, name, batched):
    """vmap over the args whose role is ``batched``: (outputs, (losses, grads)), one per example."""
    args, argnums, weight = example(name, (BATCH,), (batched,))
    in_axes = tuple(0 if role == batched else None for role in roles(name))
    value_and_grad = jax.value_and_grad(scalar_of(f, weight), argnums)  # the bwd rule, batched
    return jax.jit(lambda *a: (jax.vmap(f, in_axes)(*a), jax.vmap(value_and_grad, in_axes)(*a)))(*args)


@functools.cache
def reference_per_example(name, batched):
    return per_example(twin(name), name, batched)


# --- jit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_jit_with_static_options(name):
    """jit of the op with its options static (they are hashable): its value and its grads."""
    args, argnums, weight = example(name)
    options = EXAMPLES[name].options
    jitted = jax.jit(getattr(purebp, name), static_argnames=tuple(options))
    jitted_op = lambda *args: jitted(*args, **options)
    got = jax.jit(lambda *a: (jitted_op(*a), jax.value_and_grad(scalar_of(jitted_op, weight), argnums)(*a)))(*args)
    assert_trees_close(got, reference_call(name), RTOL32)


@pytest.mark.slow  # a fresh process compiling every op eagerly: 8 s and growing with the table
def test_an_eager_vjp_compiles_one_program_each_way():
    """Called eagerly, every op runs as one jitted program (as jax.nn's ops do) and its VJP as a
    second, never primitive by primitive, each compiled apart. Counted in a fresh process
    (tests/eager_compiles.py), where no earlier test compiled any of them."""
    script = pathlib.Path(__file__).with_name("eager_compiles.py")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=script.parent)
    assert run.returncode == 0, run.stderr[-4000:]
    programs = json.loads(run.stdout)
    assert list(programs) == OPS
    not_one_each_way = {name: names for name, names in programs.items() if len(names) != 2 or names[0] != names[1]}
    assert not not_one_each_way, not_one_each_way


# Open: in bfloat16 these err from the float32 truth by more than the twin does, at an element where
# a sum cancels. Whether the rule or the check (whose per-element tolerance does not widen for sums
# that cancel) is at fault is not settled; strict, so either fix shows.
BF16_OPEN = {
    "mlp": "first layer's weight cotangent, Σ_batch a δ: 9.7e-5 where the truth is 2.4e-4, the twin 2.7e-4",
    "batch_norm": "second order, γ's cotangent: 1.2457e-5 where the truth is 1.1734e-5, the twin 1.1742e-5 "
                  "(7.2e-7 over a tolerance of 7.0e-7)",
}


# bfloat16 in the slow pass (.ci/run runs it): half of this test's time, and the default run's budget
@pytest.mark.parametrize("dtype", [pytest.param(jnp.float64, id="f64"),
                                   pytest.param(jnp.bfloat16, id="bf16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", OPS)
def test_check_vjp_at_its_defaults(name, dtype, request):
    """Every part of check_vjp on every op: second order (the rule differentiated: grad of grad, at
    float64's tolerance), vmap over cotangents and over arguments (labels batched), each argument
    and output alone and, in bfloat16, the float32 truth. The modules' grids check their many
    shapes in float32 and float64 at the first order (op_examples.FIRST_ORDER)."""
    if dtype == jnp.bfloat16 and name in BF16_OPEN:
        request.applymarker(pytest.mark.xfail(reason=BF16_OPEN[name], raises=AssertionError, strict=True))
    with jax.enable_x64(dtype == jnp.float64):
        check_vjp(op(name), twin(name), *cast(draw(name), dtype))


# --- vmap --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_vmap_over_inputs(name):
    """vmap over an extra leading axis of the inputs (data and labels): values, per-example grads."""
    assert_trees_close(per_example(op(name), name, "input"), reference_per_example(name, "input"), RTOL32)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_vmap_over_params(name):
    """vmap over a stack of weights and biases, the input shared: values, per-example grads."""
    assert_trees_close(per_example(op(name), name, "param"), reference_per_example(name, "param"), RTOL32)


# --- scan --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_scan_over_a_stack_of_inputs(name):
    """Σ_t loss(op(inputs_t, params)) accumulated by a lax.scan with the op in its body: the total,
    the stacked outputs and the grad of the whole scan w.r.t. the stack and the shared params.

    The expected values are the reference's per-example ones (vmap over the same stack): the total
    is their sum, a stacked input's grad is the per-example grads, a shared param's is their sum.
    """
    args, argnums, weight = example(name, (BATCH,), ("input",))
    stacked = [role == "input" for role in roles(name)]
    loss = scalar_of(op(name), weight)

    def total(*args):
        def body(carry, inputs):
            inputs = iter(inputs)
            step_args = [next(inputs) if s else a for s, a in zip(stacked, args)]
            return carry + loss(*step_args), op(name)(*step_args)
        return lax.scan(body, jnp.zeros((), jnp.float32), tuple(a for s, a in zip(stacked, args) if s))

    (got_total, got_outputs), got_grads = jax.jit(jax.value_and_grad(total, argnums, has_aux=True))(*args)
    outputs, (losses, grads) = reference_per_example(name, "input")
    grads = tuple(g if stacked[i] else jax.tree_util.tree_map(lambda t: t.sum(0), g) for i, g in zip(argnums, grads))
    assert_trees_close((got_total, got_outputs, got_grads), (losses.sum(), outputs, grads), RTOL32)


# --- checkpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_checkpoint_under_grad(name):
    """grad through jax.checkpoint with a policy that saves nothing, so that the op's forward runs
    again in the backward pass, equals the reference's plain grad."""
    args, argnums, weight = example(name)
    loss = scalar_of(op(name), weight)
    nothing_saved = jax.checkpoint(lambda *a: loss(*a) ** 2, policy=jax.checkpoint_policies.nothing_saveable)
    got = jax.jit(jax.value_and_grad(nothing_saved, argnums))(*args)
    _, (value, grads) = reference_call(name)
    squared_grads = jax.tree_util.tree_map(lambda g: 2 * value * g, grads)  # ∇(L²) = 2 L ∇L
    assert_trees_close(got, (value ** 2, squared_grads), RTOL32)


# --- second derivatives (float64) --------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_finite_differences_float64(name, x64):
    """The VJP against central differences of the op itself: the check that does not lean on the twin
    (order 1: the second derivatives are held against the twin's, which autodiff gets right once the
    twin's first derivatives are)."""
    args, constants = cast(draw(name), jnp.float64), EXAMPLES[name].constants
    varied = [i for i in range(len(args)) if i not in constants]
    bound = lambda *a: op(name)(*(a[varied.index(i)] if i in varied else args[i] for i in range(len(args))))
    check_grads(jax.jit(bound), *(args[i] for i in varied), order=1)


@pytest.mark.parametrize("name", OPS)
def test_residuals_no_larger_than_autodiff(name):
    """The backward pass keeps no more bytes alive than autodiff of the twin does."""
    args = cast(draw(name), jnp.float32)
    assert residual_bytes(op(name), *args) <= residual_bytes(twin(name), *args)


@pytest.mark.slow  # 15 s over the table; check_vjp's second order (above) is the default run's grad of grad
@pytest.mark.parametrize("name", OPS)
def test_forward_over_reverse_hessian(name, x64):
    """jax.hessian (jacfwd of jacrev) works through every op: forward mode never meets the
    custom_vjp itself, only its fwd and bwd rules, which are plain differentiable jnp/lax."""
    args = cast(draw(name), jnp.float64)
    weight = weights_for(twin(name), args)
    first = floating_argnums(args)[0]  # embedding's ids come before its table
    of_first = lambda f: lambda a: scalar_of(f, weight)(*args[:first], a, *args[first + 1:])
    got = jax.jit(jax.hessian(of_first(op(name))))(args[first])
    assert_trees_close(got, jax.jit(jax.hessian(of_first(twin(name))))(args[first]), RTOL64)


@pytest.mark.parametrize("name", ["sigmoid", "softmax", "log_softmax"])
def test_jacrev_of_jacrev_of_the_output(name, x64):
    """The second derivative of every output element, not just of a scalar of them."""
    (z,) = cast(draw(name), jnp.float64)
    got = jax.jit(jax.jacrev(jax.jacrev(op(name))))(z)
    assert_trees_close(got, jax.jit(jax.jacfwd(jax.jacrev(twin(name))))(z), RTOL64)


# --- forward mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_jvp_raises(name):
    """jax.jvp of any op: JAX refuses forward mode through a custom_vjp, with a TypeError."""
    args = cast(draw(name), jnp.float32)
    f, primals = of_floats(op(name), args)
    with pytest.raises(TypeError, match=FORWARD_MODE_ERROR):
        jax.jvp(f, primals, jax.tree_util.tree_map(jnp.ones_like, primals))


def apply_linearized(f):
    return lambda x: jax.linearize(f, x)[1](x)  # linearize itself succeeds; applying its result raises


@pytest.mark.parametrize("transform", [jax.jacfwd, apply_linearized], ids=["jacfwd", "linearize"])
@pytest.mark.parametrize("name", ["sigmoid", "softmax", "dense", "mlp", "conv", "max_pool"])
def test_forward_mode_transforms_raise(name, transform):
    args = cast(draw(name), jnp.float32)
    fn = op(name)
    f = lambda first: jnp.sum(fn(first, *args[1:]))
    with pytest.raises(TypeError, match=FORWARD_MODE_ERROR):
        transform(f)(args[0])
