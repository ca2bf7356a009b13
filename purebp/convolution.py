r"""Convolutions: conv and conv_transpose, channels-last, 1 to 3 spatial dims.

Layout, stated once: an input is ``(N, *spatial, C_in)``, a kernel ``(*kernel, C_in // groups,
C_out)`` (``conv_transpose`` has no groups: ``(*kernel, C_in, C_out)``), an output
``(N, *out_spatial, C_out)``. The number of spatial dims comes from ``x.ndim - 2``.

Both ops are one ``lax.conv_general_dilated`` with explicit ``(lo, hi)`` padding: ``conv`` strides
its window over the input; ``conv_transpose`` spreads its input ``stride`` apart (lhs dilation) and
slides the window one position at a time. They share one ``custom_vjp`` core whose backward rule is
two more convolutions, written out: the input cotangent correlates the cotangent with the flipped
kernel (a transposed convolution), the kernel cotangent correlates the input with the cotangent,
the batch being the contracted dim. Residuals: the input and the kernel, nothing else.

On CPUs the same sums are computed as matmuls where XLA:CPU's convolutions are slow (chosen by
``lax.platform_dependent`` when the program is lowered, so GPUs and TPUs keep the convolutions):
the kernel cotangent always (patches · ȳ, a few examples at a time), the input cotangent of a conv
on at most four input channels (ȳ wᵀ, then a sum of shifted copies). Measurements:
``docs/performance.md``.
Derivations: ``docs/derivations/convolution.md``, ``docs/derivations/transposed-convolution.md``.
"""
from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from purebp import _static, _types


def conv(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1):
    r"""N-d convolution, channels-last: y[n, o] = ∑_k x̂[n, o·s + k·d] · w[k] + b, x̂ the padded input.

    A cross-correlation, as in every deep-learning library: x̂ is the input zero-padded by
    ``(lo, hi)``, s the stride, d the dilation, and each term a row of channels times the matrix
    w[k]. Per output channel, with G groups and γ(c_o) the group of channel c_o:
    y[n, o, c_o] = ∑_{k, c} x̂[n, o·s + k·d, γ(c_o)·C_in/G + c] · w[k, c, c_o] + b[c_o].
    Equals ``lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)`` (and the 1-D, 3-D
    analogues) plus ``b``.

    Backward: x̄ = ``conv_transpose`` of ȳ with the flipped kernel (channels swapped per group),
    w̄[k] = ∑_{n,o} x̂[n, o·s + k·d]ᵀ ȳ[n, o], b̄ = ∑_{n,o} ȳ[n, o].

    Args:
      x: floating ``(N, *spatial, C_in)`` with 1, 2 or 3 spatial dims.
      w: ``(*kernel, C_in // groups, C_out)``, in ``x``'s dtype.
      b: optional ``(C_out,)``, in ``x``'s dtype.
      stride: an int or one per spatial dim, positive.
      padding: ``"VALID"``, ``"SAME"`` (output ``ceil(in / stride)``), an int ``p`` (``(p, p)`` on
        every spatial dim) or one ``(lo, hi)`` pair per spatial dim.
      dilation: kernel dilation, an int or one per spatial dim, positive.
      groups: feature groups; ``C_in`` and ``C_out`` must be divisible by it (``groups == C_in``
        is a depthwise convolution).

    Returns:
      ``(N, *out_spatial, C_out)`` in ``x``'s dtype, with ``out = (in + lo + hi - (k - 1) d - 1)
      // s + 1`` per spatial dim.

    Raises:
      TypeError: if an argument is not floating or the dtypes differ.
      ValueError: for a bad rank, mismatched channels, a bad ``groups``, ``stride``, ``dilation``,
        ``padding`` or ``b``, or a (dilated) kernel larger than the padded input.

    >>> conv(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 3, 8)), stride=2, padding="SAME").shape
    (1, 3, 3, 8)

    Derivation: docs/derivations/convolution.md.
    """
    n = _check_operands(x, w, b, "(*kernel, C_in // groups, C_out)")
    groups = _static.positive_int(groups, "groups")
    c_in, c_out = jnp.shape(x)[-1], jnp.shape(w)[-1]
    if c_in % groups:
        raise ValueError(f"`x`'s channels C_in (={c_in}) must be divisible by `groups` (={groups}).")
    if jnp.shape(w)[-2] != c_in // groups:
        raise ValueError(
            f"`w` must have shape (*kernel, {c_in // groups}, C_out) for `x` with {c_in} channels "
            f"and `groups`={groups}, got {jnp.shape(w)}.")
    if c_out % groups:
        raise ValueError(f"`w`'s output channels C_out (={c_out}) must be divisible by `groups` (={groups}).")
    stride = _static.spatial_tuple(stride, n, "stride")
    dilation = _static.spatial_tuple(dilation, n, "dilation")
    padding = _static.normalize_padding(padding, n)
    in_spatial, window = jnp.shape(x)[1:-1], _static.dilate_shape(jnp.shape(w)[:n], dilation)
    pairs = _static.padding_pairs(padding, in_spatial, window, stride)
    _static.check_window_fits(in_spatial, pairs, window, "w")
    return _conv(stride, pairs, (1,) * n, dilation, groups, _types.of(b), x, w, b)


def conv_transpose(x, w, b=None, *, stride=1, padding="VALID", dilation=1):
    r"""N-d transposed convolution: y[n, o] = ∑_k x̃[n, o + k·d] · w[k] + b, x̃ the spread input.

    The input spread ``stride`` apart, then convolved with stride 1: x̃ is the input with
    ``stride - 1`` zeros between neighbours, zero-padded by ``(lo, hi)``. Per output channel:
    y[n, o, c_o] = ∑_{k, c} x̃[n, o + k·d, c] · w[k, c, c_o] + b[c_o].
    Equals ``lax.conv_transpose(x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=
    ('NHWC', 'HWIO', 'NHWC'), transpose_kernel=False)`` plus ``b``: explicit pairs pad the spread
    input (lax's default ``use_consistent_padding=False``), while ``"SAME"`` gives ``in * stride``
    outputs and ``"VALID"`` ``in * stride + max(k_eff - stride, 0)``, ``k_eff = (k - 1) d + 1``, as
    Keras' ``Conv2DTranspose``. With the kernel flipped and its channels swapped, it is the adjoint
    (the input cotangent) of ``conv`` with that stride.

    Backward: x̄ = ``conv`` of ȳ with the flipped, channel-swapped kernel at ``stride``,
    w̄[k] = ∑_{n,o} x̃[n, o + k·d]ᵀ ȳ[n, o], b̄ = ∑_{n,o} ȳ[n, o].

    Args:
      x: floating ``(N, *spatial, C_in)`` with 1, 2 or 3 spatial dims.
      w: ``(*kernel, C_in, C_out)``, in ``x``'s dtype.
      b: optional ``(C_out,)``, in ``x``'s dtype.
      stride: the fractional stride (the upsampling factor), an int or one per spatial dim.
      padding: ``"VALID"``, ``"SAME"``, an int ``p`` or one ``(lo, hi)`` pair per spatial dim.
      dilation: kernel dilation, an int or one per spatial dim.

    Returns:
      ``(N, *out_spatial, C_out)`` in ``x``'s dtype; with explicit pairs
      ``out = (in - 1) stride + 1 + lo + hi - k_eff + 1``.

    Raises:
      TypeError: if an argument is not floating or the dtypes differ.
      ValueError: for a bad rank, mismatched channels, a bad ``stride``, ``dilation``, ``padding``
        or ``b``, or a (dilated) kernel larger than the padded, spread input.

    >>> conv_transpose(jnp.ones((1, 3, 3, 8)), jnp.ones((3, 3, 8, 4)), stride=2, padding="SAME").shape
    (1, 6, 6, 4)

    Derivation: docs/derivations/transposed-convolution.md.
    """
    n = _check_operands(x, w, b, "(*kernel, C_in, C_out)")
    c_in = jnp.shape(x)[-1]
    if jnp.shape(w)[-2] != c_in:
        raise ValueError(
            f"`w` must have shape (*kernel, {c_in}, C_out) for `x` with {c_in} channels, "
            f"got {jnp.shape(w)}.")
    stride = _static.spatial_tuple(stride, n, "stride")
    dilation = _static.spatial_tuple(dilation, n, "dilation")
    padding = _static.normalize_padding(padding, n)
    window = _static.dilate_shape(jnp.shape(w)[:n], dilation)
    if isinstance(padding, str):  # "SAME" / "VALID" name the forward conv this one inverts
        pairs = tuple(_transpose_padding(k, s, padding) for k, s in zip(window, stride))
    else:  # explicit pairs pad the spread input, as lax.conv_transpose's
        pairs = padding
    spread = _static.dilate_shape(jnp.shape(x)[1:-1], stride)
    _static.check_window_fits(spread, pairs, window, "w")
    return _conv((1,) * n, pairs, stride, dilation, 1, _types.of(b), x, w, b)


def _check_operands(x, w, b, kernel_layout):
    """Dtypes and ranks of x, w and b; returns the number of spatial dims."""
    _static.check_floating(x, "x")
    _static.check_floating(w, "w")
    n = _static.num_spatial_dims(x, "x")
    _static.check_ndim(w, "w", f"{kernel_layout} with {n} kernel dims, as `x` has {n} spatial dims", (n + 2,))
    if not all(jnp.shape(w)[:n]):
        raise ValueError(f"`w` must have a positive extent in each of its {n} kernel dims, got shape {jnp.shape(w)}.")
    _static.check_dtype_of(w, "w", x, "x")
    if b is not None:
        _static.check_floating(b, "b")
        if jnp.shape(b) != jnp.shape(w)[-1:]:
            raise ValueError(f"`b` must have shape {jnp.shape(w)[-1:]} (C_out of `w`), got {jnp.shape(b)}.")
        _static.check_dtype_of(b, "b", x, "x")
    return n


def _transpose_padding(window, stride, mode):
    """lax.conv_transpose's (lo, hi) for "SAME" / "VALID", with ``window`` the dilated kernel extent.

    The spread input has ``(in - 1) stride + 1`` positions; these pads make ``in * stride`` outputs
    ("SAME") or ``in * stride + max(window - stride, 0)`` ("VALID").
    """
    if mode == "SAME":
        total = window + stride - 2
        lo = window - 1 if stride > window - 1 else -(-total // 2)  # ceil(total / 2)
    else:
        total = window + stride - 2 + max(window - stride, 0)
        lo = window - 1
    return lo, total - lo


def _layout(num_spatial):
    """Channels-last dimension numbers: e.g. ('NHWC', 'HWIO', 'NHWC') for 2 spatial dims."""
    spatial = "DHW"[-num_spatial:]
    return "N" + spatial + "C", spatial + "IO", "N" + spatial + "C"


# The core: y = conv_general_dilated(x, w) with window stride `stride`, explicit pairs `padding`,
# input (lhs) dilation `input_dilation` and kernel (rhs) dilation `dilation`. conv has
# input_dilation = 1; conv_transpose has stride = 1 and input_dilation = its stride. `bias` is the
# bias's type (static, so the bias is no residual), None for no bias.
@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5))
def _conv(stride, padding, input_dilation, dilation, groups, bias, x, w, b):
    return _conv_fwd(stride, padding, input_dilation, dilation, groups, bias, x, w, b)[0]


def _conv_fwd(stride, padding, input_dilation, dilation, groups, bias, x, w, b):
    y = lax.conv_general_dilated(
        x, w, window_strides=stride, padding=padding, lhs_dilation=input_dilation,
        rhs_dilation=dilation, dimension_numbers=_layout(x.ndim - 2), feature_group_count=groups,
        out_sharding=_types.features_out(x, w, batch_dims=1))  # a split kernel works under Explicit axes
    return (y if bias is None else y + b), (x, w)


def _conv_bwd(stride, padding, input_dilation, dilation, groups, bias, res, g):
    # ((x, w), ct y) -> (ct x, ct w, ct b). Per spatial dim, y[o] reads x̂[o s + k d] = x[i] where
    # i l + lo = o s + k d (l = input_dilation), so both cotangents sum over exactly those (o, k, i).
    x, w = res
    geometry = (stride, padding, input_dilation, dilation, groups)
    cpu_input = _input_cotangent_by_matmul if _input_matmul_pays(input_dilation, groups, w) else None
    dx = _per_platform(cpu_input, _input_cotangent_by_convolution, geometry, _types.of(x), x, w, g)  # ȳ ⋆ flip(w)ᵀ
    dw = _per_platform(_kernel_cotangent_by_matmul, _kernel_cotangent_by_convolution, geometry, _types.of(w),
                       x, w, g)  # w̄[k] = Σ_{n,o} x̂[n, o s + k d]ᵀ ȳ[n, o]
    db = None if bias is None else g.sum(tuple(range(g.ndim - 1)))  # b̄ = Σ_{n,o} ȳ
    return dx, dw, _types.like(db, bias)


def _per_platform(cpu, default, geometry, primal, x, w, g):
    """``default(*geometry, x, w, g)``, or ``cpu``'s on CPUs (None: default everywhere), typed as ``primal``.

    XLA:CPU runs some convolutions far below its matmul speed (a kernel as large as the image, an
    output of few channels), so CPUs get those as matmuls; GPUs and TPUs keep the convolutions
    their libraries are tuned for. ``lax.platform_dependent`` chooses when the program is lowered;
    its branches must return one type, so each is cast to the primal's.
    """
    typed = lambda fn: lambda *arrays: _types.like(fn(*geometry, *arrays), primal)
    if cpu is None:
        return typed(default)(x, w, g)
    return lax.platform_dependent(x, w, g, cpu=typed(cpu), default=typed(default))


def _input_cotangent_by_convolution(stride, padding, input_dilation, dilation, groups, x, w, g):
    """x̄[i] = Σ_k ȳ[(i l + lo − k d) / s] w[k]ᵀ: ȳ spread s apart, padded (k_eff−1−lo, k_eff−1−hi+r),
    correlated with the flipped kernel at stride l — a transposed convolution of ȳ."""
    data, kernel, _ = _layout(x.ndim - 2)
    window = _static.dilate_shape(w.shape[:-2], dilation)  # k_eff = (k − 1) d + 1
    remainder = _unread_padding(stride, padding, input_dilation, window, x, g)
    return lax.conv_general_dilated(
        g, _flip_and_swap(w, groups), window_strides=input_dilation,
        padding=[(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip(window, padding, remainder)],
        lhs_dilation=stride, rhs_dilation=dilation, dimension_numbers=(data, kernel, data),
        feature_group_count=groups, out_sharding=_types.sharding(x))


# The most input channels for which `_input_cotangent_by_matmul` beats XLA:CPU's transposed
# convolution, whose output then has too few channels to vectorise over: 3x3 kernels on
# (128, 28, 28, C_in) from 32 channels, 1.4 ms against 5.4 for C_in = 1 (2.6 against 6.0 on a busy
# machine), 4.7 against 6.1 for C_in = 3; from C_in = 32 on, the convolution wins (12 against 16 ms
# on (128, 14, 14)), the matmul's columns being taps × larger than x̄.
_MATMUL_MAX_INPUT_CHANNELS = 4


def _input_matmul_pays(input_dilation, groups, w):
    """Whether CPUs get x̄ from `_input_cotangent_by_matmul`: a conv (no input dilation, no groups)
    on at most `_MATMUL_MAX_INPUT_CHANNELS` input channels."""
    return all(l == 1 for l in input_dilation) and groups == 1 and w.shape[-2] <= _MATMUL_MAX_INPUT_CHANNELS


def _input_cotangent_by_matmul(stride, padding, input_dilation, dilation, groups, x, w, g):
    """x̄ as one matmul and a sum of shifted copies: the CPU formulation for conv on few channels.

    ``cols[o, k] = ȳ[o] w[k]ᵀ`` for every tap k at once; tap k's columns belong at the input
    positions ``o s + k d − lo``, where one lax.pad spreads them s apart, shifts and crops them;
    x̄ is the sum over taps. Input gradients of images (saliency maps, adversarial examples) are
    the case this serves (`_input_matmul_pays`). Elsewhere, and for conv_transpose, whose x̄ is a
    strided convolution XLA:CPU runs well, the convolution stays on every platform.
    """
    kernel, (c_in, c_out) = w.shape[:-2], w.shape[-2:]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    accumulate = jnp.promote_types(x.dtype, jnp.float32)  # half-precision sums accumulate in float32
    w = jnp.reshape(w, (len(taps), c_in, c_out), out_sharding=_types.named(w))
    cols = jnp.einsum("...j,tcj->...tc", g, w, preferred_element_type=accumulate,
                      out_sharding=_types.named(g, *_types.spec(g)[:1]))
    zero = jnp.zeros((), accumulate)

    def placed(t, tap):  # tap's columns at o s + k d − lo, zeros elsewhere: an input-shaped array
        pads = [(k * d - lo, i - (k * d - lo) - (o - 1) * s - 1, s - 1) for k, d, (lo, _), i, o, s
                in zip(tap, dilation, padding, x.shape[1:-1], g.shape[1:-1], stride)]
        return lax.pad(cols[..., t, :], zero, [(0, 0, 0), *pads, (0, 0, 0)])

    return sum(placed(t, tap) for t, tap in enumerate(taps))


def _unread_padding(stride, padding, input_dilation, window, x, g):
    """r per spatial dim: padded positions past the last window, never read when s does not divide
    the input."""
    spread = _static.dilate_shape(x.shape[1:-1], input_dilation)  # (in − 1) l + 1
    return [e + lo + hi - k - (o - 1) * s
            for e, (lo, hi), k, o, s in zip(spread, padding, window, g.shape[1:-1], stride)]


def _kernel_cotangent_by_convolution(stride, padding, input_dilation, dilation, groups, x, w, g):
    """w̄ as one convolution: ȳ is the kernel (dilated by s), the batch N the contracted dim, window
    stride d; x's channels are the batch, split into groups."""
    spatial = _layout(x.ndim - 2)[0][1:-1]
    window = _static.dilate_shape(w.shape[:-2], dilation)
    remainder = _unread_padding(stride, padding, input_dilation, window, x, g)
    return lax.conv_general_dilated(
        x, g, window_strides=dilation, padding=[(lo, hi - r) for (lo, hi), r in zip(padding, remainder)],
        lhs_dilation=input_dilation, rhs_dilation=stride,
        dimension_numbers=("C" + spatial + "N", "I" + spatial + "O", spatial + "NC"),
        batch_group_count=groups, out_sharding=_types.sharding(w))


# Examples per matmul in `_kernel_cotangent_by_matmul`: chunks whose patches take about this many
# bytes stay in cache. 3x3 kernels, 32 -> 64 channels: on (128, 14, 14) 12 ms against 31 in one
# matmul over the batch, on (128, 28, 28) 46 against about 115; 1 MiB and 16 MiB chunks are
# 1.5-2x slower, 4 MiB within 15% (faster alone, no faster inside the CNN training step).
_PATCH_BYTES_PER_CHUNK = 2 ** 21


def _kernel_cotangent_by_matmul(stride, padding, input_dilation, dilation, groups, x, w, g):
    """w̄ as Σ over chunks of examples of patchesᵀ · ȳ: the CPU formulation.

    Per spatial dim, x[i] meets ȳ[o] through kernel tap k where i l + lo = o s + k d. With l = 1
    (conv) the patches are the windows of x̂ = x padded: x̂[o s + k d] for every o. With s = 1
    (conv_transpose) they are the windows of ȳ: ȳ[i l + lo − k d] for every i, which skips the
    zeros that spreading x would add; with s = l = 1 the smaller of the two is gathered.
    """
    kernel = w.shape[:-2]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    in_spatial, out_spatial = x.shape[1:-1], g.shape[1:-1]
    gather_cotangent = all(s == 1 for s in stride) and (
        any(l > 1 for l in input_dilation) or g.shape[-1] < x.shape[-1])
    if gather_cotangent:
        reach = [(k - 1) * d for k, d in zip(kernel, dilation)]  # ȳ padded by (reach − lo) in front
        pads = [(r - lo, (i - 1) * l + lo + 1 - o)
                for r, (lo, _), i, l, o in zip(reach, padding, in_spatial, input_dilation, out_spatial)]
        starts = [tuple(r - k * d for r, k, d in zip(reach, tap, dilation)) for tap in taps]
        windows = partial(_strided_windows, pads=pads, interior=(0,) * len(kernel), starts=starts,
                          step=input_dilation, count=in_spatial)
        per_chunk = lambda x, g: _grouped_contraction(x, windows(g), groups, patches_first=False)
        patch_bytes = len(taps) * math.prod(in_spatial) * g.shape[-1] * g.dtype.itemsize
    else:
        starts = [tuple(k * d for k, d in zip(tap, dilation)) for tap in taps]
        windows = partial(_strided_windows, pads=padding, interior=[l - 1 for l in input_dilation],
                          starts=starts, step=stride, count=out_spatial)
        per_chunk = lambda x, g: _grouped_contraction(windows(x), g, groups, patches_first=True)
        patch_bytes = len(taps) * math.prod(out_spatial) * x.shape[-1] * x.dtype.itemsize
    dw = _sum_over_example_chunks(per_chunk, (x, g), _examples_per_chunk(patch_bytes))
    return dw.reshape(*kernel, *dw.shape[1:])


def _examples_per_chunk(patch_bytes):
    return max(1, _PATCH_BYTES_PER_CHUNK // patch_bytes)


def _strided_windows(a, pads, interior, starts, step, count):
    """``(N, *count, len(starts), C)``: for each start, ``â[start + step · o]`` for ``o < count``, where
    ``â`` is ``a`` padded by ``pads`` with ``interior`` zeros between neighbours (lax.pad, so a
    negative pad trims)."""
    zero = jnp.zeros((), a.dtype)
    a = lax.pad(a, zero, [(0, 0, 0), *((lo, hi, i) for (lo, hi), i in zip(pads, interior)), (0, 0, 0)])

    def window(start):
        limit = [b + (c - 1) * s + 1 for b, c, s in zip(start, count, step)]
        return lax.slice(a, (0, *start, 0), (a.shape[0], *limit, a.shape[-1]), (1, *step, 1))

    return jnp.stack([window(start) for start in starts], axis=-2)


def _grouped_contraction(a, b, groups, patches_first):
    """``(taps, C_in // G, C_out)``: Σ over the example and spatial dims of ``a``'s and ``b``'s
    channels, group by group; the patches (the one with the taps dim) are ``a`` or ``b``."""
    a, b = (jnp.reshape(c, (*c.shape[:-1], groups, c.shape[-1] // groups),
                        out_sharding=_types.named(c, *_types.spec(c)[:1])) for c in (a, b))
    summed = tuple(range((b if patches_first else a).ndim - 2))  # N and the spatial dims
    accumulate = jnp.promote_types(a.dtype, jnp.float32)  # half-precision sums accumulate in float32
    # Summed over the examples, so whole on every device; the rule reshards it as w.
    out = lax.dot_general(a, b, ((summed, summed), ((a.ndim - 2,), (b.ndim - 2,))),
                          preferred_element_type=accumulate, out_sharding=_types.named(a))
    # patches first: (G, taps, C_in/G, C_out/G); else (G, C_in/G, taps, C_out/G)
    out = out.transpose((1, 2, 0, 3) if patches_first else (2, 1, 0, 3))
    return out.reshape(*out.shape[:2], -1)


def _sum_over_example_chunks(fn, arrays, chunk):
    """``fn(*arrays)`` for ``fn`` a sum over the leading (example) dim, ``chunk`` examples at a time."""
    n = arrays[0].shape[0]
    full = n - n % chunk
    # One chunk (and perhaps a remainder) needs no loop. Nor does a program partitioned over several
    # devices: each holds a part of the batch already, and chunks that cut across the parts make XLA
    # gather them (a CNN step on 8 devices, Auto axes: 4 all-gathers and 6 collective-permutes of
    # patches); under Explicit axes a split batch dim cannot be cut into chunks at all.
    if full <= chunk or jax.sharding.get_abstract_mesh().size > 1 or _types.spec(arrays[0])[0] is not None:
        return fn(*arrays)
    stacked = tuple(a[:full].reshape(full // chunk, chunk, *a.shape[1:]) for a in arrays)
    total = lax.map(lambda chunk_arrays: fn(*chunk_arrays), stacked).sum(0)
    return total if full == n else total + fn(*(a[full:] for a in arrays))


def _flip_and_swap(w, groups):
    """The input cotangent's kernel: w[k, c, γ·C_out/G + j] -> w'[K−1−k, j, γ·C_in/G + c].

    ``(*kernel, C_in // G, C_out)`` becomes ``(*kernel, C_out // G, C_in)``: spatial dims reversed,
    each group's in/out channel block transposed in place.
    """
    *kernel, c_in_group, c_out = w.shape
    n = len(kernel)
    whole = _types.named(w)  # the kernel's few bytes are gathered on every device, as the forward does
    w = jnp.reshape(lax.rev(w, tuple(range(n))), (*kernel, c_in_group, groups, c_out // groups), out_sharding=whole)
    return jnp.reshape(jnp.swapaxes(w, n, n + 2), (*kernel, c_out // groups, groups * c_in_group), out_sharding=whole)


_conv.defvjp(_conv_fwd, _conv_bwd)
_conv = jax.jit(_conv, static_argnums=range(6))  # one program per call (purebp/__init__.py)
