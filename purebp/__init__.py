"""purebp: functional JAX neural-network operations whose every backward pass is written by hand.

Every operation here is a ``jax.custom_vjp``; ``purebp.reference`` holds their plain-jnp twins,
``purebp.testing`` the tools that hold the two against each other. Each op's fwd rule computes its
output itself and never calls the op, so forward mode only ever meets plain jnp/lax there: forward
over reverse (``jax.hessian``) works through every op.

Each op is also jitted, as jax.nn's activations are: what follows the check of its static
arguments, those as jit's static arguments (the whole op where it has none). Called eagerly, an op
then compiles once per shape into one program for its forward pass and one for its backward rule,
where op-by-op dispatch compiles and runs each of its primitives apart (the first eager gradient
of ``softmax`` on a new shape: 1.95 s → 0.89 s; of the integer-label loss: 3.3 s → 1.7 s). Under
an outer ``jax.jit`` the op is inlined and the compiled program is the same.
"""
from purebp.activations import gelu
from purebp.activations import leaky_relu
from purebp.activations import log_sigmoid
from purebp.activations import log_softmax
from purebp.activations import relu
from purebp.activations import sigmoid
from purebp.activations import silu
from purebp.activations import softmax
from purebp.activations import softplus
from purebp.activations import tanh
from purebp.attention import dot_product_attention
from purebp.convolution import conv
from purebp.convolution import conv_transpose
from purebp.embeddings import embedding
from purebp.linear import dense
from purebp.linear import mlp
from purebp.losses import binary_cross_entropy
from purebp.losses import l2_loss
from purebp.losses import sigmoid_binary_cross_entropy
from purebp.losses import softmax_cross_entropy
from purebp.losses import softmax_cross_entropy_with_integer_labels
from purebp.losses import squared_error
from purebp.normalization import batch_norm
from purebp.normalization import layer_norm
from purebp.normalization import rms_norm
from purebp.padding import zero_pad
from purebp.pooling import avg_pool
from purebp.pooling import max_pool
from purebp.regularization import dropout

__version__ = "0.1.0"
