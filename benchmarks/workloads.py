"""The workloads: their sizes, and each model and op built twice over the same arrays.

- **purebp**: purebp's ops and layers, whose VJPs are written by hand.
- **autodiff**: the same computation from ``purebp.reference``'s plain-jnp twins, as a function of
  the same params pytree, differentiated by JAX itself.
- **jax.nn** (the attention family alone): ``jax.nn.dot_product_attention(implementation="xla")``,
  JAX's own attention, differentiated by JAX too.

Training steps are ``purebp.training.make_train_step`` with ``optax.sgd(LEARNING_RATE, momentum=MOMENTUM)``
over the mean integer-label softmax cross-entropy. Everything is float32 and channels-last. The
PyTorch versions (``benchmarks.torch_eager``) are built from these arrays too; ``torch_options``
spells each op in ``torch.nn.functional``'s terms.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

import purebp
from purebp import layers, reference

LEARNING_RATE, MOMENTUM = 0.01, 0.9


@dataclass(frozen=True)
class Sizes:
    matmul: int  # n of the n×n by n×n matmul that measures the machine's peak
    mlp_batch: int
    mlp_widths: tuple[int, ...]  # input, hidden layers, classes
    batch: int  # of the CNN and of the ops
    image: int  # side of the CNN's one-channel square images, and of the ops' inputs
    features: tuple[int, int]  # the CNN's two convolutions' widths, also the ops' channels
    up_features: int  # conv_transpose's output channels
    rows: tuple[int, int]  # the second family's input (rows, features): a batch of token vectors
    vocabulary: int  # rows of embedding's table, of the second family's feature width
    # The attention family's (B, heads, N, repeats) by size name: B·heads shrinks as N grows, to keep
    # a call within seconds; repeats, the most timed calls per system, shrinks with it. At 32k
    # autodiff's N×N arrays no longer fit a 23 GiB machine, while purebp's blocks do.
    attention: dict[str, tuple[int, int, int, int]]


FULL = Sizes(matmul=1024, mlp_batch=256, mlp_widths=(784, 1024, 1024, 10), batch=128, image=28,
             features=(32, 64), up_features=16, rows=(8192, 1024), vocabulary=32768,
             attention={"1k": (8, 8, 1024, 10), "4k": (1, 8, 4096, 5), "16k": (1, 2, 16384, 3),
                        "32k": (1, 2, 32768, 1)})
TINY = Sizes(matmul=64, mlp_batch=8, mlp_widths=(32, 64, 64, 10), batch=2, image=8, features=(4, 8),
             up_features=2, rows=(16, 32), vocabulary=64,
             attention={"1k": (2, 2, 16, 3), "4k": (1, 2, 32, 3), "16k": (1, 1, 48, 3), "32k": (1, 1, 64, 3)})
HEAD = 64  # the attention family's head size H, in FULL and TINY alike


@dataclass(frozen=True)
class MatmulWorkload:
    name: str
    label: str
    a: jnp.ndarray
    b: jnp.ndarray

    @property
    def flops(self) -> float:
        return 2.0 * self.a.shape[0] * self.a.shape[1] * self.b.shape[1]


@dataclass(frozen=True)
class StepWorkload:
    """A model's training step: ``loss_*(params, x, labels)`` is the batch's mean loss."""

    name: str
    label: str
    loss_purebp: Callable
    loss_autodiff: Callable
    params: list
    batch: tuple  # (x, labels)
    flops: float | None = None  # of forward + backward, where counting them is simple


@dataclass(frozen=True)
class OpWorkload:
    """One op on ``args``, with purebp's keyword ``options`` and the same op's in PyTorch.

    It is differentiated with respect to the args at the positions ``wrt`` (every arg if None), the
    others held fixed (dropout's key, embedding's ids), and, where the op returns several outputs,
    for the one at ``output`` alone (batch_norm's y, not its new statistics).
    """

    name: str
    label: str
    op: str  # the function's name in purebp, in purebp.reference and in torch_eager
    args: tuple
    options: dict = field(default_factory=dict)
    torch_options: dict = field(default_factory=dict)
    wrt: tuple[int, ...] | None = None
    output: int | None = None
    # Whether PyTorch's output and cotangents must equal purebp's: not where torch_options spell the
    # same work but another function (dropout's own mask; windows placed one step off, a kernel flipped).
    torch_checked: bool = True

    @property
    def argnums(self) -> tuple[int, ...]:
        """The positions of the args differentiated."""
        return tuple(range(len(self.args))) if self.wrt is None else self.wrt

    def purebp(self, *args):
        return self._output(getattr(purebp, self.op)(*args, **self.options))

    def autodiff(self, *args):
        return self._output(getattr(reference, self.op)(*args, **self.options))

    def _output(self, out):
        return out if self.output is None else out[self.output]


@dataclass(frozen=True)
class AttentionWorkload:
    """Self-attention: ``dot_product_attention`` on a query, key and value of one shape, (B, N, heads, H).

    Differentiated with respect to all three; timed as fwd+bwd alone, at most ``repeats`` times.
    """

    name: str
    label: str
    args: tuple  # (query, key, value)
    is_causal: bool
    repeats: int

    def purebp(self, *args):
        return purebp.dot_product_attention(*args, is_causal=self.is_causal)

    def autodiff(self, *args):
        return reference.dot_product_attention(*args, is_causal=self.is_causal)

    def jax_nn(self, *args):
        return jax.nn.dot_product_attention(*args, is_causal=self.is_causal, implementation="xla")

    @property
    def blockwise_residual_bytes(self) -> int:
        """q, k, v and o, and L, one float32 per (batch, head, query row): what the blockwise rule keeps."""
        query = self.args[0]
        b, n, heads, _ = query.shape
        return sum(a.nbytes for a in self.args) + query.nbytes + 4 * b * heads * n


def _normal(rng, shape, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def _classification_batch(rng, x_shape, classes):
    return _normal(rng, x_shape), jnp.asarray(rng.integers(0, classes, x_shape[0]), jnp.int32)


def _mean_cross_entropy(cross_entropy, logits, labels):
    return jnp.mean(cross_entropy(logits, labels))


def matmul(sizes: Sizes, rng) -> MatmulWorkload:
    n = sizes.matmul
    return MatmulWorkload("matmul", f"matmul {n}×{n} @ {n}×{n}", _normal(rng, (n, n)), _normal(rng, (n, n)))


def mlp(sizes: Sizes, rng) -> StepWorkload:
    """purebp.mlp (the whole network as one VJP) against reference.mlp, relu hidden layers."""
    widths, batch = sizes.mlp_widths, sizes.mlp_batch
    model = layers.MLP(widths[1:], activation="relu")
    params = _init(rng, model, (batch, widths[0]))

    def loss_purebp(params, x, labels):
        return _mean_cross_entropy(purebp.softmax_cross_entropy_with_integer_labels, model.apply(params, x), labels)

    def loss_autodiff(params, x, labels):
        logits = reference.mlp(params, x, activation="relu")
        return _mean_cross_entropy(reference.softmax_cross_entropy_with_integer_labels, logits, labels)

    # Forward 2·B·Σ in·out; backward twice that (dx and dw per layer) but for the first layer's dx,
    # the input's cotangent, which a training step never computes; the rest is O(B·Σ out).
    products = [m * n for m, n in zip(widths[:-1], widths[1:])]
    flops = 2 * batch * (3 * sum(products) - products[0])
    label = f"MLP {'-'.join(map(str, widths))}, batch {batch}, SGD+momentum step"
    return StepWorkload("mlp", label, loss_purebp, loss_autodiff, params,
                        _classification_batch(rng, (batch, widths[0]), widths[-1]), flops)


def cnn(sizes: Sizes, rng) -> StepWorkload:
    """conv3×3-relu-maxpool2-conv3×3-relu-maxpool2-dense, purebp.layers against the reference twins."""
    (f1, f2), side, classes = sizes.features, sizes.image, sizes.mlp_widths[-1]
    model = layers.serial(
        layers.Conv(f1, 3, padding="SAME"), layers.Relu(), layers.MaxPool(2),
        layers.Conv(f2, 3, padding="SAME"), layers.Relu(), layers.MaxPool(2),
        layers.Flatten(), layers.Dense(classes))
    x_shape = (sizes.batch, side, side, 1)
    params = _init(rng, model, x_shape)

    def loss_purebp(params, x, labels):
        return _mean_cross_entropy(purebp.softmax_cross_entropy_with_integer_labels, model.apply(params, x), labels)

    def loss_autodiff(params, x, labels):
        return _mean_cross_entropy(reference.softmax_cross_entropy_with_integer_labels,
                                   cnn_reference(params, x), labels)

    label = (f"CNN {side}×{side}×1, batch {sizes.batch}: conv3×3({f1})-relu-maxpool2-conv3×3({f2})-relu-"
             f"maxpool2-dense({classes}), SGD+momentum step")
    return StepWorkload("cnn", label, loss_purebp, loss_autodiff, params,
                        _classification_batch(rng, x_shape, classes))


def cnn_reference(params, x):
    """The CNN of ``cnn`` from the reference twins, over the same params list as its purebp layers."""
    conv1, _, _, conv2, _, _, _, dense = params
    for conv in (conv1, conv2):
        x = reference.max_pool(reference.relu(reference.conv(x, conv["w"], conv["b"], padding="SAME")), 2)
    return reference.dense(x.reshape(x.shape[0], -1), dense["w"], dense["b"])


def ops(sizes: Sizes, rng) -> list[OpWorkload]:
    """max_pool (non-overlapping and overlapping), convolutions and a strided conv_transpose.

    The pools and the wide convolution take the CNN's first activation, ``(batch, image, image,
    features[0])``; the first convolution takes its images, the second its pooled activation (and
    conv_transpose upsamples that). Torch's symmetric padding 1 gives
    SAME's output shapes (for the 3×3 stride 2 pool, SAME pads (0, 1) rather than (1, 1): the same
    work).
    """
    b, s, (f1, f2), up = sizes.batch, sizes.image, sizes.features, sizes.up_features
    pooled = _normal(rng, (b, s, s, f1))
    image = _normal(rng, (b, s, s, 1))
    small = _normal(rng, (b, s // 2, s // 2, f1))

    def kernel(c_in, c_out):  # LeCun scale keeps activations O(1)
        return _normal(rng, (3, 3, c_in, c_out), (9 * c_in) ** -0.5), _normal(rng, (c_out,), 0.1)

    def pool(name, window, stride, padding, torch_padding, torch_checked=True):
        label = f"max_pool {window}×{window}/{stride} {padding}, {_shape(pooled)}"
        return OpWorkload(name, label, "max_pool", (pooled,), dict(window=window, stride=stride, padding=padding),
                          dict(kernel_size=window, stride=stride, padding=torch_padding), torch_checked=torch_checked)

    return [
        pool("max_pool", 2, 2, "VALID", 0),
        pool("max_pool_overlap", 3, 2, "SAME", 1, torch_checked=False),  # torch's windows start a row earlier
        pool("max_pool_stride1", 3, 1, "SAME", 1),
        OpWorkload("conv_first", f"conv 3×3 SAME, {_shape(image)} → {f1}", "conv", (image, *kernel(1, f1)),
                   dict(padding="SAME"), dict(padding=1)),
        OpWorkload("conv_second", f"conv 3×3 SAME, {_shape(small)} → {f2}", "conv", (small, *kernel(f1, f2)),
                   dict(padding="SAME"), dict(padding=1)),
        OpWorkload("conv_wide", f"conv 3×3 SAME, {_shape(pooled)} → {f2}", "conv", (pooled, *kernel(f1, f2)),
                   dict(padding="SAME"), dict(padding=1)),
        # torch's conv_transpose2d flips the kernel, and its padding 1 crops one row and column
        # more at the start than SAME: the same work on other numbers
        OpWorkload("conv_transpose", f"conv_transpose 3×3/2 SAME, {_shape(small)} → {up}", "conv_transpose",
                   (small, *kernel(f1, up)), dict(stride=2, padding="SAME"),
                   dict(stride=2, padding=1, output_padding=1), torch_checked=False),
    ]


def second_family(sizes: Sizes, rng) -> list[OpWorkload]:
    """Issue 15's ops on one batch of token vectors x, ``(rows, features)``: activations, norms, dropout, embedding.

    embedding looks up ``rows`` ids in a ``(vocabulary, features)`` table, so that its output has
    x's shape; batch_norm takes the features as its channels, from running statistics 0 and 1.
    Options are spelled out where they are the defaults too, to match PyTorch's.
    """
    (n, c), vocabulary = sizes.rows, sizes.vocabulary
    x = _normal(rng, (n, c))
    scale, bias = 1 + _normal(rng, (c,), 0.1), _normal(rng, (c,), 0.1)
    ids, table = jnp.asarray(rng.integers(0, vocabulary, n), jnp.int32), _normal(rng, (vocabulary, c))
    stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}
    shape = _shape(x)

    def elementwise(name, op, what, options=None, torch_options=None):
        return OpWorkload(name, f"{what}, {shape}", op, (x,), options or {}, torch_options or {})

    return [
        elementwise("gelu", "gelu", "gelu (tanh)", dict(approximate=True), dict(approximate="tanh")),
        elementwise("gelu_erf", "gelu", "gelu (erf)", dict(approximate=False), dict(approximate="none")),
        elementwise("silu", "silu", "silu"),
        elementwise("softplus", "softplus", "softplus"),
        elementwise("log_sigmoid", "log_sigmoid", "log_sigmoid"),
        elementwise("leaky_relu", "leaky_relu", "leaky_relu 0.01", dict(negative_slope=0.01),
                    dict(negative_slope=0.01)),
        OpWorkload("layer_norm", f"layer_norm, {shape}", "layer_norm", (x, scale, bias), dict(epsilon=1e-6),
                   dict(eps=1e-6)),
        OpWorkload("rms_norm", f"rms_norm, {shape}", "rms_norm", (x, scale), dict(epsilon=1e-6), dict(eps=1e-6)),
        OpWorkload("dropout", f"dropout 0.1, {shape}", "dropout", (x, jax.random.PRNGKey(0)), dict(rate=0.1),
                   dict(p=0.1, training=True), wrt=(0,), torch_checked=False),
        OpWorkload("embedding", f"embedding, {n} ids into ({vocabulary}, {c})", "embedding", (ids, table),
                   wrt=(1,)),
        # torch's momentum weighs the batch's statistics, purebp's (flax's) the running ones
        OpWorkload("batch_norm", f"batch_norm (train), {shape}", "batch_norm", (x, scale, bias, stats),
                   dict(train=True, momentum=0.99, epsilon=1e-5), dict(training=True, momentum=0.01, eps=1e-5),
                   wrt=(0, 1, 2), output=0),
    ]


def attention(sizes: Sizes, rng) -> list[AttentionWorkload]:
    """Issue 16's dot_product_attention at each size of ``sizes.attention``, without and with the causal mask.

    Inputs of unit variance, so that the logits (scaled by 1/√H) are O(1) and the softmax neither
    one-hot nor uniform.
    """
    workloads = []
    for size, (b, heads, n, repeats) in sizes.attention.items():
        shape = (b, n, heads, HEAD)
        args = tuple(_normal(rng, shape) for _ in range(3))
        for is_causal in (False, True):
            label = f"{'causal ' if is_causal else ''}attention, {_shape(args[0])}"
            workloads.append(AttentionWorkload(f"attention_{size}{'_causal' if is_causal else ''}", label, args,
                                               is_causal, repeats))
    return workloads


def all_workloads(sizes: Sizes, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [matmul(sizes, rng), mlp(sizes, rng), cnn(sizes, rng), *ops(sizes, rng), *second_family(sizes, rng),
            *attention(sizes, rng)]


# The workloads' names by family, in all_workloads' order (the CLI's --only choices, before
# anything is built). Each family has a section of the page to itself (benchmarks.report).
FAMILIES = {
    "first": ("matmul", "mlp", "cnn", "max_pool", "max_pool_overlap", "max_pool_stride1", "conv_first",
              "conv_second", "conv_wide", "conv_transpose"),
    "second": ("gelu", "gelu_erf", "silu", "softplus", "log_sigmoid", "leaky_relu", "layer_norm", "rms_norm",
               "dropout", "embedding", "batch_norm"),
    "attention": tuple(f"attention_{size}{causal}" for size in FULL.attention for causal in ("", "_causal")),
}
NAMES = tuple(name for names in FAMILIES.values() for name in names)


def _init(rng, model, input_shape):
    """``model``'s params pytree, with LeCun-normal weights (the layers' default) and zero biases.

    The shapes come from ``model.init`` evaluated abstractly; the values are drawn with numpy,
    because the layers' own initialisers run eagerly and compile a truncated-normal program per
    shape, seconds each on a small CPU.
    """
    shapes = jax.eval_shape(lambda key: model.init(key, input_shape)[1], jax.random.key(0))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: _normal(rng, s.shape, math.prod(s.shape[:-1]) ** -0.5)
        if path[-1].key == "w" else jnp.zeros(s.shape, s.dtype), shapes)


def _shape(x):
    return "(" + ", ".join(map(str, x.shape)) + ")"
