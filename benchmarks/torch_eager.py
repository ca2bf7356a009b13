"""PyTorch eager versions of the workloads (float32, CPU), built from the same arrays and parameters.

Importing this module needs torch (the ``bench`` extra); the runner leaves PyTorch out without it.
Each image workload (4-D: the CNN, the pools and convolutions) runs in two memory formats: ``NCHW``
(torch's default) and ``channels-last`` (``torch.channels_last``: NHWC in memory, often faster on
CPU); the second family's 2-D ops need no conversion and run in the default alone; attention takes its
heads before the sequence. Models are ``torch.nn`` modules with the JAX parameters copied in, so
their first loss matches purebp's.
"""
from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle threads sleep instead of spinning. Spinning threads
# kept a core busy after every PyTorch call and slowed whichever JAX system ran next by up to 5 ms
# (MLP step medians 20-22 ms against 16.9 with passive waiting); PyTorch's own times were no worse.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
# purebp's ops by name, each taking purebp's args in purebp's order (as tensors) and torch's options.
_FUNCTIONS = {
    "max_pool": F.max_pool2d, "conv": F.conv2d, "conv_transpose": F.conv_transpose2d,
    "gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "log_sigmoid": F.logsigmoid,
    "leaky_relu": F.leaky_relu, "embedding": F.embedding,
    # torch takes the normalised shape as an argument where purebp normalises over `axis`, the last
    "layer_norm": lambda x, scale, bias, **options: F.layer_norm(x, x.shape[-1:], scale, bias, **options),
    "rms_norm": lambda x, scale, **options: F.rms_norm(x, x.shape[-1:], scale, **options),
    "dropout": lambda x, key, **options: F.dropout(x, **options),  # torch draws from its own generator
    # torch updates the running statistics in place (purebp returns new ones): the tensors are copies
    "batch_norm": lambda x, scale, bias, stats, **options: F.batch_norm(x, stats["mean"], stats["var"], scale, bias,
                                                                       **options),
}
# JAX's channels-last arrays to torch's logical NCHW: activations (N, H, W, C) -> (N, C, H, W);
# conv kernels (kh, kw, in, out) -> (out, in, kh, kw); conv_transpose kernels -> (in, out, kh, kw).
_TO_NCHW = {"activation": (0, 3, 1, 2), "conv": (3, 2, 0, 1), "conv_transpose": (2, 3, 0, 1)}
# JAX's attention arrays (B, N, heads, H) to torch's (B, heads, N, H), and back (the swap is its own inverse).
_HEADS_FIRST = (0, 2, 1, 3)


def configure():
    """Gives torch's intra-op pool every core, as XLA's CPU backend uses."""
    torch.set_num_threads(os.cpu_count())


def threads() -> int:
    return torch.get_num_threads()


def version() -> str:
    return torch.__version__


def _tensor(array, permutation=None, layout=torch.contiguous_format):
    array = np.asarray(array)
    if permutation is not None:
        array = array.transpose(permutation)
    tensor = torch.from_numpy(np.array(array, order="C"))  # a writable copy: JAX's buffers are read-only
    return tensor.contiguous(memory_format=layout) if tensor.ndim == 4 else tensor


def matmul(a, b):
    a, b = _tensor(a), _tensor(b)
    return lambda: torch.mm(a, b)


def _train_step(model, x, labels, learning_rate, momentum):
    """The timed step, and the loss at the initial parameters (for the runner's sanity check)."""
    with torch.no_grad():
        initial_loss = float(F.cross_entropy(model(x), labels))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step, initial_loss


def mlp_step(params, x, labels, learning_rate, momentum):
    """Linear-ReLU-...-Linear with purebp.mlp's ``[in, out]`` weights (torch stores ``[out, in]``)."""
    modules = []
    for layer in params:
        linear = nn.Linear(*layer["w"].shape)
        with torch.no_grad():
            linear.weight.copy_(_tensor(layer["w"], (1, 0)))
            linear.bias.copy_(_tensor(layer["b"]))
        modules += [linear, nn.ReLU()]
    model = nn.Sequential(*modules[:-1])
    return _train_step(model, _tensor(x), _tensor(labels).long(), learning_rate, momentum)


def cnn_step(params, x, labels, learning_rate, momentum, layout):
    """The CNN of ``workloads.cnn`` as an ``nn.Sequential`` in memory format ``layout``."""
    conv1, _, _, conv2, _, _, _, dense = params
    convs = []
    for conv in (conv1, conv2):
        *_, c_in, c_out = conv["w"].shape
        module = nn.Conv2d(c_in, c_out, 3, padding=1)
        with torch.no_grad():
            module.weight.copy_(_tensor(conv["w"], _TO_NCHW["conv"]))
            module.bias.copy_(_tensor(conv["b"]))
        convs.append(module)
    side, channels, classes = x.shape[1] // 4, conv2["w"].shape[-1], dense["w"].shape[-1]
    linear = nn.Linear(side * side * channels, classes)
    with torch.no_grad():
        # purebp flattens (H, W, C), torch (C, H, W): reorder the dense layer's input rows to match.
        rows = np.asarray(dense["w"]).reshape(side, side, channels, classes).transpose(3, 2, 0, 1)
        linear.weight.copy_(_tensor(rows.reshape(classes, -1)))
        linear.bias.copy_(_tensor(dense["b"]))
    model = nn.Sequential(convs[0], nn.ReLU(), nn.MaxPool2d(2), convs[1], nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), linear).to(memory_format=LAYOUTS[layout])
    x = _tensor(x, _TO_NCHW["activation"], LAYOUTS[layout])
    return _train_step(model, x, _tensor(labels).long(), learning_rate, momentum)


def op_passes(op, args, argnums, torch_options, cotangent, layout):
    """``(backward, forward_backward, results)`` of one op on ``args``, JAX's channels-last arrays.

    Both passes differentiate with respect to the args at ``argnums``. ``backward`` applies the
    saved graph to ``cotangent`` (``retain_graph``, so it can run again); ``forward_backward`` runs
    the op and then its backward. ``results`` are the output and backward's cotangents, as numpy
    arrays in JAX's layout. Raises ValueError where torch's output shape differs from the
    cotangent's, i.e. where ``torch_options`` do not spell the JAX op.
    """
    layout = LAYOUTS[layout]
    tensors = [_argument(op, position, arg, layout) for position, arg in enumerate(args)]
    inputs = [tensors[position] for position in argnums]
    for tensor in inputs:
        tensor.requires_grad_()
    function = _FUNCTIONS[op]
    y = function(*tensors, **torch_options)
    g = _tensor(cotangent, _to_nchw(op, 0, cotangent), layout)
    if y.shape != g.shape:
        raise ValueError(f"torch's {op} with {torch_options} gives shape {tuple(y.shape)}, JAX's {tuple(g.shape)}.")

    def backward():
        return torch.autograd.grad(y, inputs, g, retain_graph=True)

    def forward_backward():
        return torch.autograd.grad(function(*tensors, **torch_options), inputs, g)

    cotangents = [_array(t, _to_nchw(op, position, args[position])) for position, t in zip(argnums, backward())]
    return backward, forward_backward, (_array(y, _to_nchw(op, 0, cotangent)), cotangents)


def attention_passes(query, key, value, cotangent, is_causal):
    """``(forward_backward, results)`` of ``F.scaled_dot_product_attention`` on JAX's (B, N, heads, H) arrays.

    The tensors are contiguous in torch's (B, heads, N, H), as a torch model lays them out;
    ``forward_backward`` returns the output and the three cotangents, ``results`` the same as numpy
    arrays in JAX's layout. On CPU, float32, torch runs its blockwise (flash) kernel.
    """
    inputs = [_tensor(a, _HEADS_FIRST).requires_grad_() for a in (query, key, value)]
    g = _tensor(cotangent, _HEADS_FIRST)

    def forward_backward():
        y = F.scaled_dot_product_attention(*inputs, is_causal=is_causal)
        return y, torch.autograd.grad(y, inputs, g)

    y, cotangents = forward_backward()
    return forward_backward, (_array(y, _HEADS_FIRST), [_array(t, _HEADS_FIRST) for t in cotangents])


def _argument(op, position, arg, layout):
    """One of the op's args as torch's: an array as a tensor, a dict of them (batch_norm's stats) as a dict."""
    if isinstance(arg, dict):
        return {name: _tensor(value) for name, value in arg.items()}
    return _tensor(arg, _to_nchw(op, position, arg), layout)


def _to_nchw(op, position, array):
    """The permutation of ``_TO_NCHW`` that takes the op's arg at ``position`` to torch's layout, if it has one.

    Only images and kernels (4-D) have one: the first arg is the activation, the later ones weights.
    """
    if np.ndim(array) != 4:
        return None
    return _TO_NCHW["activation"] if position == 0 else _TO_NCHW[op]


def _array(tensor, permutation):
    """A torch result as a numpy array in JAX's layout: ``_tensor``'s inverse."""
    array = tensor.detach().numpy()
    return array if permutation is None else array.transpose(np.argsort(permutation))
