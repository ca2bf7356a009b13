"""Tests for purebp.convolution: conv and conv_transpose against lax, their reference twins and each other."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import purebp
from purebp import reference, testing

from purebp import convolution as conv_module
from op_examples import check_first_order

LAYOUT = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def operands(x_shape, w_shape, bias=True, dtype=jnp.float32, seed=0):
    """x, w and (if bias) b drawn from a standard normal, in ``dtype``."""
    rng = np.random.default_rng(seed)
    x, w, b = (jnp.asarray(rng.standard_normal(s), dtype) for s in (x_shape, w_shape, w_shape[-1:]))
    return x, w, b if bias else None


def lax_arguments(kwargs, n):
    """stride, padding and dilation spelled out for lax: one int / one (lo, hi) pair per spatial dim."""
    per_dim = lambda v: (v,) * n if isinstance(v, int) else v
    padding = kwargs.get("padding", "VALID")
    return (per_dim(kwargs.get("stride", 1)), ((padding, padding),) * n if isinstance(padding, int) else padding,
            per_dim(kwargs.get("dilation", 1)))


# (x shape, w shape, keyword arguments, with bias), named by what each case exercises. "uneven":
# the stride does not divide the padded input (a remainder r > 0); "beyond-kernel": padding larger
# than k_eff - 1, so the input cotangent's padding is negative (a crop).
CONV_CASES = [
    pytest.param((2, 7, 3), (3, 3, 4), {}, True, id="1d-valid"),
    pytest.param((2, 7, 3), (3, 3, 4), dict(stride=2, padding="SAME"), False, id="1d-same-stride2"),
    pytest.param((2, 9, 2), (2, 2, 4), dict(stride=3), True, id="1d-stride3-uneven"),
    pytest.param((1, 10, 2), (2, 2, 2), dict(stride=3, padding=((0, 1),)), False, id="1d-stride-beyond-kernel"),
    pytest.param((1, 6, 2), (3, 2, 3), dict(padding=1, dilation=2), False, id="1d-int-pad-dilation2"),
    pytest.param((2, 6, 4), (2, 2, 6), dict(padding=((4, 3),), groups=2), True, id="1d-pad-beyond-kernel-groups2"),
    pytest.param((1, 11, 3), (2, 1, 6), dict(stride=2, padding="SAME", dilation=3, groups=3), False,
                 id="1d-depthwise-x2-stride2-dilation3-same"),
    pytest.param((2, 5, 6, 3), (3, 2, 3, 4), {}, True, id="2d-valid"),
    pytest.param((1, 7, 6, 2), (3, 3, 2, 3), dict(stride=2, padding="SAME"), False, id="2d-same-stride2"),
    pytest.param((1, 8, 7, 2), (2, 3, 2, 3), dict(stride=(3, 2), padding=((2, 0), (1, 2))), True,
                 id="2d-stride3x2-uneven-pairs"),
    pytest.param((1, 6, 5, 2), (2, 2, 2, 2), dict(dilation=(2, 1), padding=2), False, id="2d-dilation2x1-int-pad"),
    pytest.param((2, 5, 5, 4), (3, 3, 2, 6), dict(groups=2), True, id="2d-groups2"),
    pytest.param((1, 6, 6, 3), (3, 3, 1, 3), dict(groups=3, padding="SAME"), False, id="2d-depthwise-same"),
    pytest.param((1, 7, 8, 3), (3, 2, 1, 6), dict(stride=(3, 2), padding=((2, 0), (1, 2)), dilation=(1, 2), groups=3),
                 True, id="2d-depthwise-x2-stride-pairs-dilation"),
    pytest.param((5, 6, 5, 4), (3, 3, 4, 2), dict(padding="SAME"), True, id="2d-same-fewer-out-channels-batch5"),
    pytest.param((1, 4, 5, 3, 2), (2, 2, 2, 2, 3), {}, False, id="3d-valid"),
    pytest.param((1, 5, 4, 3, 2), (3, 2, 2, 2, 2), dict(stride=2, padding="SAME"), True, id="3d-same-stride2"),
    pytest.param((1, 5, 6, 4, 2), (2, 3, 2, 1, 4), dict(stride=(2, 3, 1), padding=1, dilation=(2, 1, 1), groups=2),
                 True, id="3d-groups2-uneven-dilation"),
]

TRANSPOSE_CASES = [
    pytest.param((2, 4, 3), (3, 3, 4), {}, True, id="1d-valid"),
    pytest.param((2, 4, 3), (3, 3, 4), dict(stride=2), False, id="1d-valid-stride2"),
    pytest.param((2, 4, 3), (3, 3, 4), dict(stride=3, padding="SAME", dilation=2), True, id="1d-same-stride3-dilation2"),
    pytest.param((1, 4, 2), (2, 2, 3), dict(stride=3), False, id="1d-valid-stride-beyond-kernel"),
    pytest.param((2, 4, 3), (2, 3, 4), dict(stride=3, padding=((5, 1),)), True, id="1d-pairs-beyond-kernel"),
    pytest.param((1, 5, 2), (3, 2, 2), dict(stride=2, padding=1), False, id="1d-int-pad-stride2"),
    pytest.param((1, 5, 2), (4, 2, 2), dict(padding="SAME"), True, id="1d-same-even-kernel"),
    pytest.param((1, 3, 4, 2), (3, 2, 2, 3), dict(stride=(2, 3), dilation=(1, 2)), True, id="2d-valid-stride2x3-dilation"),
    pytest.param((2, 3, 3, 2), (3, 3, 2, 3), dict(stride=2, padding="SAME"), False, id="2d-same-stride2"),
    pytest.param((1, 3, 4, 2), (2, 3, 2, 2), dict(stride=2, padding=((0, 1), (3, 2))), True, id="2d-pairs-asym"),
    pytest.param((5, 3, 3, 3), (3, 3, 3, 2), dict(stride=2, padding="SAME"), True, id="2d-same-stride2-batch5"),
    pytest.param((1, 2, 3, 2, 2), (2, 3, 2, 2, 3), dict(stride=2, padding="SAME"), True, id="3d-same-stride2"),
    pytest.param((1, 3, 2, 2, 2), (2, 2, 2, 2, 2), dict(stride=(1, 2, 1), dilation=(2, 1, 1)), False,
                 id="3d-valid-dilation"),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs, bias", CONV_CASES)
def test_conv_matches_lax(x_shape, w_shape, kwargs, bias):
    x, w, b = operands(x_shape, w_shape, bias)
    n = len(x_shape) - 2
    stride, padding, dilation = lax_arguments(kwargs, n)
    want = lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=LAYOUT[n],
                                    feature_group_count=kwargs.get("groups", 1))
    want = want if b is None else want + b
    np.testing.assert_allclose(purebp.conv(x, w, b, **kwargs), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, bias", TRANSPOSE_CASES)
def test_conv_transpose_matches_lax(x_shape, w_shape, kwargs, bias):
    x, w, b = operands(x_shape, w_shape, bias)
    n = len(x_shape) - 2
    stride, padding, dilation = lax_arguments(kwargs, n)
    want = lax.conv_transpose(x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=LAYOUT[n],
                              transpose_kernel=False)
    want = want if b is None else want + b
    np.testing.assert_allclose(purebp.conv_transpose(x, w, b, **kwargs), want, rtol=1e-6, atol=1e-5)


def under_each_formulation(cases):
    """Each case with each formulation of the backward rule that runs on this CPU: the matmuls CPUs
    get, the same with the kernel cotangent taken two examples at a time (where a batch of five
    gives two chunks and a remainder), and the convolutions of every other platform, run here in
    their place."""
    return [pytest.param(*case.values, formulation, id=f"{case.id}-{formulation}")
            for case in cases for formulation in ("matmul", "matmul-two-examples-per-chunk", "convolution")
            if formulation != "matmul-two-examples-per-chunk" or case.values[0][0] == 5]


def use_formulation(formulation, monkeypatch):
    if formulation == "matmul-two-examples-per-chunk":
        monkeypatch.setattr(conv_module, "_examples_per_chunk", lambda patch_bytes: 2)
    if formulation == "convolution":
        monkeypatch.setattr(conv_module, "_kernel_cotangent_by_matmul", conv_module._kernel_cotangent_by_convolution)
        monkeypatch.setattr(conv_module, "_input_cotangent_by_matmul", conv_module._input_cotangent_by_convolution)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, bias, formulation", under_each_formulation(CONV_CASES))
def test_conv_vjp_matches_reference(x_shape, w_shape, kwargs, bias, formulation, monkeypatch):
    use_formulation(formulation, monkeypatch)
    check_first_order(partial(purebp.conv, **kwargs), partial(reference.conv, **kwargs),
                      *operands(x_shape, w_shape, bias))


@pytest.mark.parametrize("x_shape, w_shape, kwargs, bias, formulation", under_each_formulation(TRANSPOSE_CASES))
def test_conv_transpose_vjp_matches_reference(x_shape, w_shape, kwargs, bias, formulation, monkeypatch):
    use_formulation(formulation, monkeypatch)
    check_first_order(partial(purebp.conv_transpose, **kwargs), partial(reference.conv_transpose, **kwargs),
                      *operands(x_shape, w_shape, bias))


# One configuration per op for the transformation and dtype tests: strided, padded, dilated, grouped.
OPS = {
    "conv": (purebp.conv, reference.conv, (2, 6, 5, 4), (3, 2, 2, 6),
             dict(stride=2, padding="SAME", dilation=(1, 2), groups=2)),
    "conv_transpose": (purebp.conv_transpose, reference.conv_transpose, (2, 3, 4, 2), (3, 2, 2, 3),
                       dict(stride=(2, 3), padding=((1, 2), (0, 1)), dilation=(2, 1))),
}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# Tiny 1-D configurations for the order-2 finite-difference check (strided, dilated, grouped, padded).
@pytest.mark.parametrize("name", OPS)
def test_jit_matches_eager(name):
    op, _, x_shape, w_shape, kwargs = OPS[name]
    x, w, b = operands(x_shape, w_shape)
    f = partial(op, **kwargs)
    np.testing.assert_allclose(jax.jit(f)(x, w, b), f(x, w, b), rtol=1e-6, atol=1e-6)
    loss = lambda x, w, b: jnp.sum(f(x, w, b) ** 2)
    for got, want in zip(jax.jit(jax.grad(loss, (0, 1, 2)))(x, w, b), jax.grad(loss, (0, 1, 2))(x, w, b)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def flip_and_swap(w):
    """Kernel (*k, C_in, C_out) -> (*k, C_out, C_in), spatial dims reversed (no groups)."""
    n = w.ndim - 2
    return jnp.swapaxes(jnp.flip(w, tuple(range(n))), n, n + 1)


# (x shape, w shape, stride, padding pairs, dilation) of the conv whose adjoint is checked; pairs
# stay within k_eff - 1 so the adjoint's padding is a valid conv_transpose padding.
ADJOINT_CASES = [
    pytest.param((2, 9, 3), (3, 3, 2), (2,), ((1, 0),), (1,), id="1d-stride2-uneven"),
    pytest.param((1, 10, 2), (2, 2, 3), (3,), ((0, 1),), (2,), id="1d-stride3-dilation2-uneven"),
    pytest.param((1, 7, 8, 2), (3, 2, 2, 3), (2, 3), ((2, 1), (0, 1)), (1, 2), id="2d-stride-pairs-dilation"),
    pytest.param((1, 5, 4, 6, 2), (2, 2, 3, 2, 2), (2, 1, 2), ((1, 1), (0, 0), (2, 0)), (1, 1, 1), id="3d"),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, pairs, dilation", ADJOINT_CASES)
def test_conv_transpose_is_the_adjoint_of_conv(x_shape, w_shape, stride, pairs, dilation):
    """<conv(x, w), u> = <x, conv_transpose(u, flip(w)ᵀ)> with padding (k_eff-1-lo, k_eff-1-hi+r), and
    <conv_transpose(v, w), y> = <v, conv(y, flip(w)ᵀ)> with padding (k_eff-1-lo, k_eff-1-hi)."""
    x, w, _ = operands(x_shape, w_shape, bias=False)
    y = purebp.conv(x, w, stride=stride, padding=pairs, dilation=dilation)
    u = operands(y.shape, w_shape, bias=False, seed=1)[0]
    window = [(k - 1) * d + 1 for k, d in zip(w_shape, dilation)]
    remainder = [n + lo + hi - k - (o - 1) * s
                 for n, (lo, hi), k, o, s in zip(x_shape[1:], pairs, window, y.shape[1:], stride)]
    adjoint_pairs = tuple((k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip(window, pairs, remainder))
    x_adjoint = purebp.conv_transpose(u, flip_and_swap(w), stride=stride, padding=adjoint_pairs, dilation=dilation)
    assert x_adjoint.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(y, u), jnp.vdot(x, x_adjoint), rtol=1e-5)
    np.testing.assert_allclose(jax.vjp(lambda x: purebp.conv(x, w, stride=stride, padding=pairs,
                                                             dilation=dilation), x)[1](u)[0],
                               x_adjoint, rtol=1e-5, atol=1e-5)

    # and the other way round: conv_transpose's adjoint is a plain strided conv
    v = operands(x_shape[:1] + y.shape[1:-1] + x_shape[-1:], w_shape, bias=False, seed=2)[0]
    z = purebp.conv_transpose(v, w, stride=stride, padding=pairs, dilation=dilation)
    t = operands(z.shape, w_shape, bias=False, seed=3)[0]
    back_pairs = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(window, pairs))
    v_adjoint = purebp.conv(t, flip_and_swap(w), stride=stride, padding=back_pairs, dilation=dilation)
    assert v_adjoint.shape == v.shape
    np.testing.assert_allclose(jnp.vdot(z, t), jnp.vdot(v, v_adjoint), rtol=1e-5)


@pytest.mark.parametrize("name", OPS)
def test_residuals_are_the_input_and_kernel(name):
    op, ref, x_shape, w_shape, kwargs = OPS[name]
    x, w, b = operands(x_shape, w_shape)
    ours = testing.residual_bytes(partial(op, **kwargs), x, w, b)
    assert ours == x.nbytes + w.nbytes
    assert ours <= testing.residual_bytes(partial(ref, **kwargs), x, w, b)


def ones(*shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


BAD_INPUTS = [
    pytest.param(lambda: purebp.conv(ones(5, 4), ones(3, 4, 2)), ValueError,
                 r"`x` must be \(N, \*spatial, C\) with 1, 2 or 3 spatial dims, got shape \(5, 4\)", id="conv-x-rank"),
    pytest.param(lambda: purebp.conv(ones(1, 2, 2, 2, 2, 1), ones(1, 1, 1, 1, 1, 1)), ValueError,
                 r"`x` must be .* got shape \(1, 2, 2, 2, 2, 1\) \(6 dims\)", id="conv-x-rank-4d"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 2, 4)), ValueError,
                 r"`w` must be \(\*kernel, C_in // groups, C_out\) with 2 kernel dims.* got shape \(3, 2, 4\)",
                 id="conv-w-rank"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 3), ones(3, 3, 2, 4)), ValueError,
                 r"`w` must have shape \(\*kernel, 3, C_out\) for `x` with 3 channels and `groups`=1, got \(3, 3, 2, 4\)",
                 id="conv-channel-mismatch"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 4), ones(3, 3, 4, 4), groups=2), ValueError,
                 r"`w` must have shape \(\*kernel, 2, C_out\) for `x` with 4 channels and `groups`=2",
                 id="conv-grouped-channel-mismatch"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 3), ones(3, 3, 1, 4), groups=2), ValueError,
                 r"`x`'s channels C_in \(=3\) must be divisible by `groups` \(=2\)", id="conv-c-in-groups"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 4), ones(3, 3, 2, 3), groups=2), ValueError,
                 r"`w`'s output channels C_out \(=3\) must be divisible by `groups` \(=2\)", id="conv-c-out-groups"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 4), ones(3, 3, 4, 3), groups=0), ValueError,
                 r"`groups` must be a positive int, got 0", id="conv-groups-zero"),
    pytest.param(lambda: purebp.conv(ones(1, 3, 3, 2), ones(4, 4, 2, 1)), ValueError,
                 r"`w` spans \(4, 4\) spatial positions, larger than the padded input \(3, 3\)", id="conv-kernel-too-big"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 2), ones(3, 2, 1), dilation=3), ValueError,
                 r"`w` spans \(7,\) spatial positions, larger than the padded input \(5,\)", id="conv-dilated-too-big"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), stride=0), ValueError,
                 r"`stride` must be positive, got 0", id="conv-stride-zero"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), dilation=(1, -1)), ValueError,
                 r"`dilation` must be positive, got \(1, -1\)", id="conv-dilation-negative"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), stride=(1, 2, 3)), ValueError,
                 r"`stride` must be an int or a tuple of 2 ints", id="conv-stride-length"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), padding="FULL"), ValueError,
                 r'`padding` must be "VALID", "SAME", an int or \(lo, hi\) pairs, got \'FULL\'', id="conv-padding-unknown"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), padding=((1, 1),)), ValueError,
                 r"`padding` must be .* a sequence of 2 \(lo, hi\) pairs", id="conv-padding-pairs"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), padding=-1), ValueError,
                 r"`padding` must be non-negative, got -1", id="conv-padding-negative"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 4), ones(3)), ValueError,
                 r"`b` must have shape \(4,\) \(C_out of `w`\), got \(3,\)", id="conv-bias-shape"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2, dtype=jnp.int32), ones(3, 3, 2, 1)), TypeError,
                 r"`x` must have a floating-point dtype, got int32", id="conv-int-x"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1, dtype=jnp.int32)), TypeError,
                 r"`w` must have a floating-point dtype, got int32", id="conv-int-w"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1, dtype=jnp.float16)), TypeError,
                 r"`w` must have the dtype of `x` \(float32\), got float16", id="conv-dtype-mismatch"),
    pytest.param(lambda: purebp.conv(ones(1, 5, 5, 2), ones(3, 3, 2, 1), ones(1, dtype=jnp.bfloat16)), TypeError,
                 r"`b` must have the dtype of `x` \(float32\), got bfloat16", id="conv-bias-dtype"),
    pytest.param(lambda: jax.jit(purebp.conv)(ones(1, 5, 5, 3), ones(3, 3, 2, 4)), ValueError,
                 r"`w` must have shape \(\*kernel, 3, C_out\)", id="conv-under-jit"),
    pytest.param(lambda: purebp.conv_transpose(ones(1, 5, 3), ones(3, 2, 4)), ValueError,
                 r"`w` must have shape \(\*kernel, 3, C_out\) for `x` with 3 channels, got \(3, 2, 4\)",
                 id="transpose-channel-mismatch"),
    pytest.param(lambda: purebp.conv_transpose(ones(1, 5, 3), ones(3, 3, 3, 4)), ValueError,
                 r"`w` must be \(\*kernel, C_in, C_out\) with 1 kernel dims", id="transpose-w-rank"),
    pytest.param(lambda: purebp.conv_transpose(ones(1, 2, 2), ones(5, 2, 1), padding=((1, 0),)), ValueError,
                 r"`w` spans \(5,\) spatial positions, larger than the padded input \(3,\)", id="transpose-kernel-too-big"),
    pytest.param(lambda: purebp.conv_transpose(ones(1, 4, 2), ones(3, 2, 1), stride=0), ValueError,
                 r"`stride` must be positive, got 0", id="transpose-stride-zero"),
    pytest.param(lambda: purebp.conv_transpose(ones(1, 4, 2), ones(3, 2, 1), padding="same-ish"), ValueError,
                 r"`padding` must be \"VALID\"", id="transpose-padding-unknown"),
    pytest.param(lambda: purebp.conv_transpose(ones(1, 4, 2, dtype=jnp.int8), ones(3, 2, 1)), TypeError,
                 r"`x` must have a floating-point dtype, got int8", id="transpose-int-x"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUTS)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
