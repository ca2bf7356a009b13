"""A convolutional autoencoder on 8×8 digits whose decoder upsamples with ConvTranspose.

Encoder: two stride-2 convolutions, 8×8×1 → 4×4×16 → 2×2×32. Decoder: two stride-2 transposed
convolutions back to 8×8×1 and a sigmoid. Trained on ``l2_loss`` with SGD and momentum 0.9.
Writes two PNGs: test digits above their reconstructions, and the training curve.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.nn import initializers

import purebp
from purebp import layers

try:
    from . import common  # python -m examples.<name>, from the repository's root
except ImportError:
    import common  # python examples/<name>.py


def model():
    he = initializers.he_normal()
    return layers.serial(
        layers.Conv(16, 3, stride=2, w_init=he), layers.Relu(),
        layers.Conv(32, 3, stride=2, w_init=he), layers.Relu(),
        layers.ConvTranspose(16, 3, stride=2, w_init=he), layers.Relu(),
        layers.ConvTranspose(1, 3, stride=2), layers.Sigmoid())


def run(*, epochs=40, learning_rate=0.5, batch_size=32, seed=0, out_dir="autoencoder_out", checkpoint_dir=None,
        log=print):
    """Trains the autoencoder, writes the PNGs to ``out_dir`` (None: none); returns params and metrics."""
    x_train, _, x_test, _ = common.digits(images=True)
    net = model()
    _, params = net.init(jax.random.PRNGKey(seed), x_train.shape)

    def per_example_loss(reconstruction, target):
        return purebp.l2_loss(reconstruction, target).reshape(len(target), -1).mean(-1)

    def loss(params, x):
        return per_example_loss(net.apply(params, x), x).mean()

    test_loss = jax.jit(lambda p: loss(p, x_test))
    (params, _, history), seconds = common.train(
        loss, params, (x_train,), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        evaluate_fn=lambda p: {"test_loss": float(test_loss(p))}, log=log, checkpoint_dir=checkpoint_dir,
        title="the convolutional autoencoder on digits")
    final = history[-1]["test_loss"]
    log(f"test l2 loss {final:.4f} (mean squared error {2 * final:.4f}) in {seconds:.1f}s")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        _plot_reconstructions(net.apply(params, x_test[:10]), x_test[:10], os.path.join(out_dir, "reconstructions.png"))
        common.plot_history(history, os.path.join(out_dir, "training_curve.png"), "the convolutional autoencoder on digits")
        log(f"wrote {out_dir}/reconstructions.png and {out_dir}/training_curve.png")
    return {"params": params, "history": history, "seconds": seconds, "test_loss": final}


def _plot_reconstructions(reconstructions, originals, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(originals), figsize=(len(originals), 2.3))
    for column, (original, reconstruction) in enumerate(zip(originals, np.asarray(reconstructions))):
        for row, image in enumerate((original, reconstruction)):
            axes[row, column].imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=1)
            axes[row, column].axis("off")
    axes[0, 0].set_title("originals", loc="left", fontsize=8)
    axes[1, 0].set_title("reconstructions", loc="left", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main(argv=None):
    cli = common.parser(__doc__.splitlines()[0], epochs=40, learning_rate=0.5, batch_size=32)
    cli.add_argument("--out-dir", default="autoencoder_out", help="where the PNGs go (default %(default)s)")
    args = cli.parse_args(argv)
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
                 out_dir=args.out_dir, checkpoint_dir=args.checkpoint_dir)
    common.save_if_asked(args, result["params"])
    return result


if __name__ == "__main__":
    common.interruptible(main)
