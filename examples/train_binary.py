"""Logistic regression's big sibling on breast-cancer diagnoses: one output logit, fused sigmoid BCE.

A 30-16-1 network (tanh hidden layer) whose loss is ``sigmoid_binary_cross_entropy`` on the
logit, so the backward pass starts from σ(z) − y, trained with SGD and momentum 0.9.
"""
from __future__ import annotations

import jax

import purebp
from purebp import layers

try:
    from . import common  # python -m examples.<name>, from the repository's root
except ImportError:
    import common  # python examples/<name>.py


def run(*, epochs=40, learning_rate=0.05, batch_size=32, hidden=16, seed=0, checkpoint_dir=None, log=print):
    """Trains the classifier; returns its params, history and test metrics."""
    x_train, y_train, x_test, y_test = common.breast_cancer()
    model = layers.serial(layers.Dense(hidden), layers.Tanh(), layers.Dense(1))
    _, params = model.init(jax.random.PRNGKey(seed), x_train.shape)

    def per_example_loss(logits, labels):
        return purebp.sigmoid_binary_cross_entropy(logits[:, 0], labels)

    def loss(params, x, y):
        return per_example_loss(model.apply(params, x), y).mean()

    (params, _, history), seconds = common.train(
        loss, params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        evaluate_fn=common.metrics_on_test_set(model.apply, x_test, y_test, per_example_loss), log=log,
        checkpoint_dir=checkpoint_dir, title=f"30-{hidden}-1 tanh network on breast-cancer diagnoses")
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s")
    return {"params": params, "history": history, "seconds": seconds, "test_accuracy": history[-1]["test_accuracy"]}


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], epochs=40, learning_rate=0.05, batch_size=32).parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
                 checkpoint_dir=args.checkpoint_dir)
    common.save_if_asked(args, result["params"])
    return result


if __name__ == "__main__":
    common.interruptible(main)
