"""Logistic regression's big sibling on breast-cancer diagnoses: one output logit, fused sigmoid BCE.

A 30-16-1 network (tanh hidden layer) whose loss is ``sigmoid_binary_cross_entropy`` on the
logit, so the backward pass starts from σ(z) − y, trained with SGD and momentum 0.9.
"""
from __future__ import annotations

import time

import jax
import optax

import purebp
from purebp import layers, training
from purebp.checkpoint import save_params

import common


def run(*, epochs=40, learning_rate=0.05, batch_size=32, hidden=16, seed=0, log=print):
    """Trains the classifier; returns its params, history and test metrics."""
    x_train, y_train, x_test, y_test = common.breast_cancer()
    model = layers.serial(layers.Dense(hidden), layers.Tanh(), layers.Dense(1))
    _, params = model.init(jax.random.PRNGKey(seed), x_train.shape)

    def per_example_loss(logits, labels):
        return purebp.sigmoid_binary_cross_entropy(logits[:, 0], labels)

    def loss(params, x, y):
        return per_example_loss(model.apply(params, x), y).mean()

    start = time.perf_counter()
    params, history = training.fit(
        loss, params, (x_train, y_train), key=jax.random.PRNGKey(seed + 1), epochs=epochs, batch_size=batch_size,
        optimizer=optax.sgd(learning_rate, momentum=0.9), log=log,
        evaluate_fn=lambda p: {"test_" + k: v for k, v in training.evaluate(
            model.apply, p, x_test, y_test, loss_fn=per_example_loss).items()})
    seconds = time.perf_counter() - start
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s")
    return {"params": params, "history": history, "seconds": seconds, "test_accuracy": history[-1]["test_accuracy"]}


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], epochs=40, learning_rate=0.05, batch_size=32).parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed)
    if args.save:
        save_params(args.save, result["params"])
        print(f"saved the params to {args.save}")
    return result


if __name__ == "__main__":
    main()
