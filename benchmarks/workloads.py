"""The workloads: their sizes, and each model and op built twice over the same arrays.

- **purebp**: purebp's ops and layers, whose VJPs are written by hand.
- **autodiff**: the same computation from ``purebp.reference``'s plain-jnp twins, as a function of
  the same params pytree, differentiated by JAX itself.

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


FULL = Sizes(matmul=1024, mlp_batch=256, mlp_widths=(784, 1024, 1024, 10), batch=128, image=28,
             features=(32, 64), up_features=16)
TINY = Sizes(matmul=64, mlp_batch=8, mlp_widths=(32, 64, 64, 10), batch=2, image=8, features=(4, 8),
             up_features=2)


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
    """One op on ``args``, with purebp's keyword ``options`` and the same op's in PyTorch."""

    name: str
    label: str
    op: str  # "max_pool", "conv" or "conv_transpose": the function in purebp and in purebp.reference
    args: tuple
    options: dict = field(default_factory=dict)
    torch_options: dict = field(default_factory=dict)

    def purebp(self, *args):
        return getattr(purebp, self.op)(*args, **self.options)

    def autodiff(self, *args):
        return getattr(reference, self.op)(*args, **self.options)


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

    def pool(name, window, stride, padding, torch_padding):
        label = f"max_pool {window}×{window}/{stride} {padding}, {_shape(pooled)}"
        return OpWorkload(name, label, "max_pool", (pooled,), dict(window=window, stride=stride, padding=padding),
                          dict(kernel_size=window, stride=stride, padding=torch_padding))

    return [
        pool("max_pool", 2, 2, "VALID", 0),
        pool("max_pool_overlap", 3, 2, "SAME", 1),
        pool("max_pool_stride1", 3, 1, "SAME", 1),
        OpWorkload("conv_first", f"conv 3×3 SAME, {_shape(image)} → {f1}", "conv", (image, *kernel(1, f1)),
                   dict(padding="SAME"), dict(padding=1)),
        OpWorkload("conv_second", f"conv 3×3 SAME, {_shape(small)} → {f2}", "conv", (small, *kernel(f1, f2)),
                   dict(padding="SAME"), dict(padding=1)),
        OpWorkload("conv_wide", f"conv 3×3 SAME, {_shape(pooled)} → {f2}", "conv", (pooled, *kernel(f1, f2)),
                   dict(padding="SAME"), dict(padding=1)),
        OpWorkload("conv_transpose", f"conv_transpose 3×3/2 SAME, {_shape(small)} → {up}", "conv_transpose",
                   (small, *kernel(f1, up)), dict(stride=2, padding="SAME"),
                   dict(stride=2, padding=1, output_padding=1)),
    ]


def all_workloads(sizes: Sizes, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [matmul(sizes, rng), mlp(sizes, rng), cnn(sizes, rng), *ops(sizes, rng)]


# The workloads' names, in all_workloads' order (the CLI's --only choices, before anything is built).
NAMES = ("matmul", "mlp", "cnn", "max_pool", "max_pool_overlap", "max_pool_stride1", "conv_first", "conv_second",
         "conv_wide", "conv_transpose")


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
