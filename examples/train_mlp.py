"""The textbook network on handwritten digits, trained twice: layer by layer, and as one VJP.

A 64-64-10 network with a sigmoid hidden layer and softmax cross entropy, trained with SGD and
momentum 0.9. Once through ``serial(Dense, Sigmoid, Dense)``, where each op has its own
hand-written VJP, and once through ``MLP``, whose single VJP is the backprop algorithm. Both start
from the same weights: the script shows their gradients agree, then trains both.
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


def run(*, epochs=30, learning_rate=0.1, batch_size=32, hidden=64, seed=0, log=print):
    """Trains both formulations; returns their test metrics, histories and the max gradient gap."""
    x_train, y_train, x_test, y_test = common.digits()
    by_layer = layers.serial(layers.Dense(hidden), layers.Sigmoid(), layers.Dense(10))
    whole = layers.MLP((hidden, 10), activation="sigmoid")
    _, layer_params = by_layer.init(jax.random.PRNGKey(seed), x_train.shape)
    mlp_params = [layer_params[0], layer_params[2]]  # the same weights, without Sigmoid's {}

    grads_by_layer = jax.grad(loss_of(by_layer))(layer_params, x_train, y_train)
    grads_whole = jax.grad(loss_of(whole))(mlp_params, x_train, y_train)
    gradient_gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves([grads_by_layer[0], grads_by_layer[2]]), jax.tree_util.tree_leaves(grads_whole)))
    log(f"max |gradient difference| at initialisation, layer-by-layer vs purebp.mlp: {gradient_gap:.2e}")

    results = {"gradient_gap": gradient_gap}
    for name, model, params in (("layer-by-layer", by_layer, layer_params), ("purebp.mlp", whole, mlp_params)):
        log(f"-- {name}")
        params, history, seconds = common.train(
            loss_of(model), params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate,
            batch_size=batch_size, seed=seed, log=log, evaluate_fn=common.metrics_on_test_set(
                model.apply, x_test, y_test, purebp.softmax_cross_entropy_with_integer_labels))
        results[name] = {"params": params, "history": history, "seconds": seconds,
                         "test_accuracy": history[-1]["test_accuracy"]}
        log(f"{name}: test accuracy {history[-1]['test_accuracy']:.2%} in {results[name]['seconds']:.1f}s")
    return results


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], epochs=30, learning_rate=0.1, batch_size=32).parse_args(argv)
    results = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed)
    common.save_if_asked(args, results["purebp.mlp"]["params"])  # the params of the purebp.mlp run
    return results


if __name__ == "__main__":
    main()
