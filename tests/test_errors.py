"""Bad input, argument by argument, for every op: a ValueError or TypeError at trace time whose
message names the argument, shows what it got and says what was expected. No `assert` guards input."""
import ast
import pathlib

import jax
import jax.numpy as jnp
import pytest

import purebp

X2 = jnp.ones((2, 3))
IMG = jnp.ones((2, 5, 5, 3))
W = jnp.ones((3, 3, 3, 4))
P = [{"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}]
I32 = jnp.ones((2, 3), jnp.int32)

# (call, error type, a regex over the message: the argument in backticks, what it got, what it needs)
CASES = {
    "sigmoid-int": (lambda: purebp.sigmoid(I32), TypeError, r"`z` must have a floating-point dtype, got int32"),
    "relu-int": (lambda: purebp.relu(I32), TypeError, r"`z` must have a floating-point dtype, got int32"),
    "tanh-int": (lambda: purebp.tanh(I32), TypeError, r"`z` must have a floating-point dtype, got int32"),
    "softmax-int": (lambda: purebp.softmax(I32), TypeError, r"`z` must have a floating-point dtype, got int32"),
    "softmax-axis": (lambda: purebp.softmax(X2, axis=-3), ValueError, r"`axis` must be in \[-2, 2\) .* got -3"),
    "softmax-axis-type": (lambda: purebp.softmax(X2, axis="rows"), TypeError, r"`axis` must be an int, got 'rows'"),
    "log_softmax-scalar": (lambda: purebp.log_softmax(jnp.float32(1)), ValueError, r"`axis` \(=-1\) needs an input "
                           r"with at least one dim, got a scalar"),
    "bce-int-p": (lambda: purebp.binary_cross_entropy(I32, X2), TypeError, r"`p` must have a floating-point dtype"),
    "bce-labels": (lambda: purebp.binary_cross_entropy(X2, jnp.ones(3)), ValueError,
                   r"`labels` must have the shape of `p` \(2, 3\), got \(3,\)"),
    "sigmoid_bce-int": (lambda: purebp.sigmoid_binary_cross_entropy(I32, X2), TypeError,
                        r"`logits` must have a floating-point dtype, got int32"),
    "sigmoid_bce-labels": (lambda: purebp.sigmoid_binary_cross_entropy(X2, jnp.ones((3, 2))), ValueError,
                           r"`labels` must have the shape of `logits` \(2, 3\), got \(3, 2\)"),
    "softmax_ce-int": (lambda: purebp.softmax_cross_entropy(I32, X2), TypeError,
                       r"`logits` must have a floating-point dtype, got int32"),
    "softmax_ce-labels": (lambda: purebp.softmax_cross_entropy(X2, jnp.ones((2, 1))), ValueError,
                          r"`labels` must have the shape of `logits` \(2, 3\), got \(2, 1\)"),
    "softmax_ce-axis": (lambda: purebp.softmax_cross_entropy(X2, X2, axis=2), ValueError, r"`axis` must be in"),
    "integer_ce-int-logits": (lambda: purebp.softmax_cross_entropy_with_integer_labels(I32, jnp.zeros(2, int)),
                              TypeError, r"`logits` must have a floating-point dtype, got int32"),
    "integer_ce-float-labels": (lambda: purebp.softmax_cross_entropy_with_integer_labels(X2, jnp.zeros(2)),
                                TypeError, r"`labels` must have an integer dtype, got float32"),
    "integer_ce-labels-shape": (lambda: purebp.softmax_cross_entropy_with_integer_labels(X2, jnp.zeros(3, int)),
                                ValueError, r"`labels` must have the shape of `logits` \(2, 3\) without axis 1, "
                                r"\(2,\), got \(3,\)"),
    "squared_error-int": (lambda: purebp.squared_error(I32), TypeError, r"`predictions` must have a floating-point"),
    "squared_error-targets": (lambda: purebp.squared_error(X2, jnp.ones(3)), ValueError,
                              r"`targets` must have the shape of `predictions` \(2, 3\), got \(3,\)"),
    "l2_loss-targets": (lambda: purebp.l2_loss(X2, jnp.ones((1, 3))), ValueError,
                        r"`targets` must have the shape of `predictions` \(2, 3\), got \(1, 3\)"),
    "dense-x-int": (lambda: purebp.dense(I32, jnp.ones((3, 2))), TypeError, r"`x` must have a floating-point dtype"),
    "dense-w-rank": (lambda: purebp.dense(X2, jnp.ones(3)), ValueError, r"`w` must be a matrix \[in, out\], got shape"),
    "dense-in": (lambda: purebp.dense(X2, jnp.ones((4, 2))), ValueError, r"`x` must have shape \[\.\.\., in\] with "
                 r"in = 4 .* got `x` of shape \(2, 3\)"),
    "dense-b": (lambda: purebp.dense(X2, jnp.ones((3, 2)), jnp.ones(3)), ValueError,
                r"`b` must have shape \(2,\) \(out of `w`\), got \(3,\)"),
    "mlp-activation": (lambda: purebp.mlp(P, X2, activation="gelu"), ValueError, r"`activation` must be one of .* "
                       r"got 'gelu'"),
    "mlp-output_activation": (lambda: purebp.mlp(P, X2, output_activation="softmax"), ValueError,
                              r"`output_activation` must be one of .* got 'softmax'"),
    "mlp-params": (lambda: purebp.mlp({"w": 1}, X2), ValueError, r"`params` must be a non-empty list"),
    "mlp-layer": (lambda: purebp.mlp([{"w": jnp.ones((3, 4))}], X2), ValueError, r"`params\[0\]` must be a dict "
                  r"with keys 'w' and 'b'"),
    "conv-x-rank": (lambda: purebp.conv(X2, W), ValueError, r"`x` must be \(N, \*spatial, C\) with 1, 2 or 3 spatial "
                    r"dims, got shape \(2, 3\)"),
    "conv-w-rank": (lambda: purebp.conv(IMG, jnp.ones((3, 3, 4))), ValueError, r"`w` must be .* got shape \(3, 3, 4\)"),
    "conv-w-empty-kernel": (lambda: purebp.conv(IMG, jnp.ones((0, 3, 3, 4))), ValueError,
                            r"`w` must have a positive extent in each of its 2 kernel dims, got shape \(0, 3, 3, 4\)"),
    "conv_transpose-w-empty-kernel": (lambda: purebp.conv_transpose(IMG, jnp.ones((3, 0, 3, 4))), ValueError,
                                      r"`w` must have a positive extent .* got shape \(3, 0, 3, 4\)"),
    "sigmoid-list": (lambda: purebp.sigmoid([1.0, 2.0]), TypeError,
                     r"`z` must be an array, got a list; convert it with jnp.asarray first"),
    "dense-list": (lambda: purebp.dense([[1.0, 2.0, 3.0]], jnp.ones((3, 2))), TypeError, r"`x` must be an array, got a list"),
    "integer_ce-tuple-labels": (lambda: purebp.softmax_cross_entropy_with_integer_labels(X2, (0, 1)), TypeError,
                                r"`labels` must be an array, got a tuple"),
    "conv-channels": (lambda: purebp.conv(IMG, jnp.ones((3, 3, 2, 4))), ValueError, r"`w` must have shape "
                      r"\(\*kernel, 3, C_out\) for `x` with 3 channels .* got \(3, 3, 2, 4\)"),
    "conv-groups": (lambda: purebp.conv(IMG, jnp.ones((3, 3, 1, 4)), groups=2), ValueError,
                    r"`x`'s channels C_in \(=3\) must be divisible by `groups` \(=2\)"),
    "conv-groups-out": (lambda: purebp.conv(jnp.ones((2, 5, 5, 4)), jnp.ones((3, 3, 2, 3)), groups=2), ValueError,
                        r"`w`'s output channels C_out \(=3\) must be divisible by `groups` \(=2\)"),
    "conv-stride": (lambda: purebp.conv(IMG, W, stride=0), ValueError, r"`stride` must be positive, got 0"),
    "conv-stride-len": (lambda: purebp.conv(IMG, W, stride=(1, 2, 3)), ValueError,
                        r"`stride` must be an int or a tuple of 2 ints .* got \(1, 2, 3\)"),
    "conv-dilation": (lambda: purebp.conv(IMG, W, dilation=-1), ValueError, r"`dilation` must be positive, got -1"),
    "conv-padding": (lambda: purebp.conv(IMG, W, padding="FULL"), ValueError, r"`padding` must be \"VALID\", "
                     r"\"SAME\", an int or \(lo, hi\) pairs, got 'FULL'"),
    "conv-padding-negative": (lambda: purebp.conv(IMG, W, padding=-1), ValueError,
                              r"`padding` must be non-negative, got -1"),
    "conv-kernel-too-big": (lambda: purebp.conv(IMG, jnp.ones((6, 6, 3, 4))), ValueError,
                            r"`w` spans \(6, 6\) spatial positions, larger than the padded input \(5, 5\)"),
    "conv-b": (lambda: purebp.conv(IMG, W, jnp.ones(3)), ValueError, r"`b` must have shape \(4,\) \(C_out of `w`\), "
               r"got \(3,\)"),
    "conv-w-dtype": (lambda: purebp.conv(IMG, W.astype(jnp.bfloat16)), TypeError, r"`w` must have the dtype of `x` "
                     r"\(float32\), got bfloat16"),
    "conv_transpose-channels": (lambda: purebp.conv_transpose(IMG, jnp.ones((3, 3, 2, 4))), ValueError,
                                r"`w` must have shape \(\*kernel, 3, C_out\) for `x` with 3 channels"),
    "conv_transpose-stride": (lambda: purebp.conv_transpose(IMG, W, stride=0), ValueError,
                              r"`stride` must be positive, got 0"),
    "conv_transpose-padding": (lambda: purebp.conv_transpose(IMG, W, padding="full"), ValueError,
                               r"`padding` must be \"VALID\", \"SAME\""),
    "zero_pad-rank": (lambda: purebp.zero_pad(X2, 1), ValueError, r"`x` must be \(N, \*spatial, C\)"),
    "zero_pad-string": (lambda: purebp.zero_pad(IMG, "SAME"), ValueError, r"`padding` must be an int or a sequence "
                        r"of 2 \(lo, hi\) pairs .* got 'SAME'"),
    "zero_pad-pairs": (lambda: purebp.zero_pad(IMG, ((1, 1),)), ValueError, r"`padding` .* got \(\(1, 1\),\)"),
    "zero_pad-int": (lambda: purebp.zero_pad(IMG.astype(jnp.int32), 1), TypeError,
                     r"`x` must have a floating-point dtype, got int32"),
    "max_pool-rank": (lambda: purebp.max_pool(X2, 2), ValueError, r"`x` must be \(N, \*spatial, C\)"),
    "max_pool-window": (lambda: purebp.max_pool(IMG, 0), ValueError, r"`window` must be positive, got 0"),
    "max_pool-window-too-big": (lambda: purebp.max_pool(IMG, (6, 2)), ValueError,
                                r"`window` spans \(6, 2\) spatial positions, larger than the padded input"),
    "max_pool-stride": (lambda: purebp.max_pool(IMG, 2, stride=0), ValueError, r"`stride` must be positive, got 0"),
    "max_pool-padding": (lambda: purebp.max_pool(IMG, 2, padding="full"), ValueError, r"`padding` must be"),
    "max_pool-int": (lambda: purebp.max_pool(IMG.astype(jnp.int32), 2), TypeError, r"`x` must have a floating-point"),
    "avg_pool-stride": (lambda: purebp.avg_pool(IMG, 2, (1, 1, 1)), ValueError,
                        r"`stride` must be an int or a tuple of 2 ints .* got \(1, 1, 1\)"),
    "avg_pool-count_include_pad": (lambda: purebp.avg_pool(IMG, 2, count_include_pad=1), TypeError,
                                   r"`count_include_pad` must be a bool, got 1"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_argument_fails_clearly(name):
    call, error, match = CASES[name]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", ["softmax_ce-labels", "conv-channels", "max_pool-window-too-big", "dense-in"])
def test_errors_come_at_trace_time(name):
    """Under jit the same error comes while tracing, before anything is compiled or run."""
    call, error, match = CASES[name]
    with pytest.raises(error, match=match):
        jax.jit(call).lower()


def test_the_package_never_asserts_on_input():
    package = pathlib.Path(purebp.__file__).parent
    asserts = [f"{path.name}:{node.lineno}" for path in package.glob("*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert asserts == []
