"""A run of ``training.fit`` killed (SIGKILL) while Orbax writes one of its checkpoints.

``python tests/killed_while_saving.py DIRECTORY SAVE`` trains ``problem()`` with checkpoints in
DIRECTORY and kills its own process as the SAVE-th checkpoint is about to be renamed into place:
its arrays and JSON are written, but it is not complete. tests/test_training.py resumes from what
is left and checks that nothing but that checkpoint is lost.
"""
import asyncio
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import purebp
from purebp import layers, training

EPOCHS, BATCH, EXAMPLES = 4, 32, 256  # 8 steps an epoch, a checkpoint at the end of each


def problem():
    """``(loss, params, data, kwargs)`` for ``fit``: a small classifier, the same in every process."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((EXAMPLES, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    model = layers.serial(layers.Dense(8), layers.Tanh(), layers.Dense(2))
    _, params = model.init(jax.random.PRNGKey(0), x.shape)

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    kwargs = dict(key=jax.random.PRNGKey(1), batch_size=BATCH, optimizer=optax.adam(1e-2), log=None)
    return loss, params, (jnp.asarray(x), jnp.asarray(y)), kwargs


def main(directory, save):
    from orbax.checkpoint._src.path import atomicity

    finalize, calls = atomicity.AtomicRenameTemporaryPath.finalize, []

    async def killed_at_the_save_asked(self):
        if self.get_final().name.isdigit():  # a step's directory, not an item's in it
            calls.append(self)
        if len(calls) == save:
            os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(60)  # never reached: the signal ends the process
        return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = killed_at_the_save_asked
    loss, params, data, kwargs = problem()
    training.fit(loss, params, data, epochs=EPOCHS, checkpoint_dir=directory, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
