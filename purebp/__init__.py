"""purebp: functional JAX neural-network operations whose every backward pass is written by hand.

Every operation here is a ``jax.custom_vjp``; ``purebp.reference`` holds their plain-jnp twins,
``purebp.testing`` the tools that hold the two against each other. Each op's fwd rule computes its
output itself and never calls the op, so forward mode only ever meets plain jnp/lax there: forward
over reverse (``jax.hessian``) works through every op.
"""
from purebp.activations import log_softmax
from purebp.activations import relu
from purebp.activations import sigmoid
from purebp.activations import softmax
from purebp.activations import tanh
from purebp.convolution import conv
from purebp.convolution import conv_transpose
from purebp.linear import dense
from purebp.linear import mlp
from purebp.losses import binary_cross_entropy
from purebp.losses import l2_loss
from purebp.losses import sigmoid_binary_cross_entropy
from purebp.losses import softmax_cross_entropy
from purebp.losses import softmax_cross_entropy_with_integer_labels
from purebp.losses import squared_error
from purebp.padding import zero_pad
from purebp.pooling import avg_pool
from purebp.pooling import max_pool

__version__ = "0.1.0"
