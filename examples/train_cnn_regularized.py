"""The benchmarks' CNN with BatchNorm after each convolution and Dropout before the classifier, on MNIST.

``Conv(32, 3×3) → BatchNorm → Relu → MaxPool(2) → Conv(64, 3×3) → BatchNorm → Relu → MaxPool(2) →
Flatten → Dropout(0.5) → Dense(10)``: ``train_cnn.py``'s network, its convolutions without a bias
(BatchNorm's β takes its place), trained the same way on the same 4,000 digits and tested on the
same 1,000. It trains with the batch's statistics and a fresh dropout mask each step, and is
evaluated with the running statistics and no dropout: the model's state (BatchNorm's running
mean and variance) is threaded by ``training.fit`` and checkpointed with the params. Every
gradient is a hand-written VJP, batch norm's ``r·(d − mean(d) − x̂·mean(d·x̂))`` among them.
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


def model(dropout: float = 0.5):
    he = initializers.he_normal()  # relu layers: variance 2 / fan_in
    return layers.serial(
        layers.Conv(32, 3, padding="SAME", use_bias=False, w_init=he), layers.BatchNorm(momentum=0.9), layers.Relu(),
        layers.MaxPool(2),
        layers.Conv(64, 3, padding="SAME", use_bias=False, w_init=he), layers.BatchNorm(momentum=0.9), layers.Relu(),
        layers.MaxPool(2),
        layers.Flatten(), layers.Dropout(dropout), layers.Dense(10))


def run(*, epochs=8, learning_rate=0.01, batch_size=32, seed=0, checkpoint_dir=None, log=print):
    """Trains the network; returns its params, state, history and test metrics."""
    x_train, y_train, x_test, y_test = common.mnist(images=True)
    net = model()
    output_shape, params = net.init(jax.random.PRNGKey(seed), x_train.shape)
    log(f"MNIST {x_train.shape[0]:,} training and {x_test.shape[0]:,} test digits; input {x_train.shape} -> "
        f"output {output_shape}")

    def loss(params, state, key, x, y):
        logits, state = net.apply(params, x, state=state, key=key, train=True)
        return purebp.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    def evaluation(params, state, x):
        return net.apply(params, x, state=state, train=False)[0]

    fitted, seconds = common.train(
        loss, params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        seed=seed, state=net.init_state(x_train.shape), has_key=True, log=log, checkpoint_dir=checkpoint_dir,
        evaluate_fn=common.metrics_on_test_set(evaluation, x_test, y_test,
                                               purebp.softmax_cross_entropy_with_integer_labels, stateful=True),
        title="the CNN with BatchNorm and Dropout on MNIST", decay=True)
    history = fitted.history
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s")
    return {"params": fitted.params, "state": fitted.state, "history": history, "seconds": seconds,
            "test_accuracy": history[-1]["test_accuracy"]}


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], epochs=8, learning_rate=0.01, batch_size=32).parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
                 checkpoint_dir=args.checkpoint_dir)
    common.save_if_asked(args, {"params": result["params"], "state": result["state"]})
    return result


if __name__ == "__main__":
    common.interruptible(main)
