"""A transformer that reads MNIST digits row by row: each 28×28 image a sequence of 28 rows of 28 pixels.

``Dense(64)`` embeds each row, ``PositionalEmbedding(28)`` adds a learned vector per row, two pre-norm
transformer blocks (``TransformerBlock``: 4 heads of 16, an MLP of 128 with GELU) attend over the rows, and a final
``LayerNorm``, ``Flatten`` and ``Dense(10)`` classify. Trained with AdamW (the learning rate
decaying along a cosine) on the bundled 4,000 training digits, tested on the 1,000 held out. Every
gradient is hand-written, attention's FlashAttention-2 rule among them: the script reports the
bytes its training step keeps for the backward pass against the same model built from
``purebp.reference``'s twins and differentiated by JAX.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import purebp
from purebp import layers, reference
from purebp.testing import residual_bytes

try:
    from . import common  # python -m examples.<name>, from the repository's root
except ImportError:
    import common  # python examples/<name>.py

ROWS, FEATURES, HEADS = 28, 64, 4


def model():
    return layers.serial(
        layers.Dense(FEATURES), layers.PositionalEmbedding(ROWS),
        layers.TransformerBlock(FEATURES, HEADS, 2 * FEATURES), layers.TransformerBlock(FEATURES, HEADS, 2 * FEATURES),
        layers.LayerNorm(), layers.Flatten(), layers.Dense(10))


def reference_model(params, x):
    """``model()``'s forward pass from the reference twins, over the same params: autodiff's version."""
    embed, positions, *blocks, norm, _, head = params
    x = reference.dense(x, embed["w"], embed["b"]) + positions["embedding"][:x.shape[1]]
    for attention, mlp in blocks:
        ln, heads = attention
        h = reference.layer_norm(x, ln["scale"], ln["bias"])
        b, t, _ = h.shape
        q, k, v = (reference.dense(h, heads[name]["w"], heads[name]["b"]).reshape(b, t, HEADS, -1)
                   for name in ("query", "key", "value"))
        o = reference.dot_product_attention(q, k, v).reshape(b, t, -1)
        x = x + reference.dense(o, heads["out"]["w"], heads["out"]["b"])
        ln, up, _, down = mlp
        h = reference.gelu(reference.dense(reference.layer_norm(x, ln["scale"], ln["bias"]), up["w"], up["b"]))
        x = x + reference.dense(h, down["w"], down["b"])
    x = reference.layer_norm(x, norm["scale"], norm["bias"]).reshape(x.shape[0], -1)
    return reference.dense(x, head["w"], head["b"])


def run(*, epochs=12, learning_rate=2e-3, batch_size=32, seed=0, checkpoint_dir=None, log=print):
    """Trains the transformer; returns its params, history, test metrics and the step's residual bytes."""
    x_train, y_train, x_test, y_test = (a.reshape(-1, ROWS, ROWS) if a.ndim == 4 else a
                                        for a in common.mnist(images=True))
    net = model()
    output_shape, params = net.init(jax.random.PRNGKey(seed), x_train.shape)
    log(f"MNIST {x_train.shape[0]:,} training and {x_test.shape[0]:,} test digits as sequences of {ROWS} rows; "
        f"input {x_train.shape} -> output {output_shape}")

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    def autodiff_loss(params, x, y):
        return reference.softmax_cross_entropy_with_integer_labels(reference_model(params, x), y).mean()

    batch = (jnp.asarray(x_train[:batch_size]), jnp.asarray(y_train[:batch_size]))
    kept = {name: residual_bytes(f, params, *batch) for name, f in (("purebp", loss), ("autodiff", autodiff_loss))}
    log(f"residual bytes of a step (batch {batch_size}): purebp {kept['purebp']:,}, autodiff {kept['autodiff']:,} "
        f"({kept['purebp'] / kept['autodiff']:.2f}×)")
    fitted, seconds = common.train(
        loss, params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        seed=seed, optimizer=optax.adamw, log=log, checkpoint_dir=checkpoint_dir, decay=True,
        evaluate_fn=common.metrics_on_test_set(net.apply, x_test, y_test,
                                               purebp.softmax_cross_entropy_with_integer_labels),
        title="a transformer over MNIST's rows")
    history = fitted.history
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s")
    return {"params": fitted.params, "history": history, "seconds": seconds,
            "test_accuracy": history[-1]["test_accuracy"], "residual_bytes": kept}


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], epochs=12, learning_rate=2e-3, batch_size=32,
                         optimizer="AdamW").parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
                 checkpoint_dir=args.checkpoint_dir)
    common.save_if_asked(args, result["params"])
    return result


if __name__ == "__main__":
    common.interruptible(main)
