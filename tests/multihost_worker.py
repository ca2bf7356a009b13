"""One process of test_distributed's two-process run: ``jax.distributed`` on CPU over loopback.

Run by ``test_two_processes_train_as_one``, not by pytest itself:
``python tests/multihost_worker.py PORT PROCESS_ID OUT_DIR`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``, so two processes see four devices. Each
process trains the digits-sized MLP of ``problem()`` with ``training.fit(..., mesh=...)``, places
one batch from its own rows with ``shard_batch`` and one from the shared arrays with ``batches``,
and writes what it saw and its params to ``OUT_DIR/process_<id>.{json,npz}``.
"""
import json
import pathlib
import sys

import jax
import numpy as np
import optax

import purebp
from purebp import layers, training
from purebp.checkpoint import save_params

PROCESSES = 2
BATCH = 16


def problem():
    """A fixed classification problem and an MLP (``purebp.mlp``) for it, the same in every process."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 12)).astype(np.float32)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 0) * 4).astype(np.int32)  # 8 classes
    model = layers.MLP((16, 8), activation="tanh")
    _, params = model.init(jax.random.PRNGKey(0), x.shape)

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    return params, loss, x, y


def fit(params, loss, x, y, mesh=None):
    return training.fit(loss, params, (x, y), key=jax.random.PRNGKey(1), epochs=2, batch_size=BATCH,
                        optimizer=optax.sgd(0.1, momentum=0.9), log=None, mesh=mesh).params


def main(port, process_id, out_dir):
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=process_id,
                               initialization_timeout=60)
    params, loss, x, y = problem()
    mesh = training.data_parallel_mesh()
    facts = {"process_index": jax.process_index(), "process_count": jax.process_count(),
             "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
             "mesh_shape": dict(mesh.shape)}

    # The first global batch, placed by each of the two routes: `batches` from the arrays every
    # process holds, `shard_batch` from this process's own rows; a step on either is the same.
    global_x, global_y = next(training.batches(None, (x, y), BATCH, shuffle=False, mesh=mesh))
    per_process = BATCH // PROCESSES
    own = slice(process_id * per_process, (process_id + 1) * per_process)
    local_x, local_y = training.shard_batch((x[own], y[own]), mesh)
    own_rows = x[own]
    facts["batch_shape"] = list(global_x.shape)
    facts["batch_spec"] = str(global_x.sharding.spec)
    facts["addressable_shards"] = len(global_x.addressable_shards)
    facts["own_rows_by_batches"] = bool(np.array_equal(
        np.concatenate([np.asarray(s.data) for s in global_x.addressable_shards]), own_rows))
    facts["own_rows_by_shard_batch"] = bool(np.array_equal(
        np.concatenate([np.asarray(s.data) for s in local_x.addressable_shards]), own_rows))

    optimizer = optax.sgd(0.1, momentum=0.9)
    step = training.make_train_step(loss, optimizer, mesh=mesh)
    state = training.replicate((params, optimizer.init(params)), mesh)
    facts["step_losses"] = [float(step(*state, global_x, global_y)[2]), float(step(*state, local_x, local_y)[2])]

    trained = fit(params, loss, x, y, mesh=mesh)
    facts["params_replicated"] = all(leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(trained))
    out = pathlib.Path(out_dir)
    save_params(out / f"process_{process_id}.npz", jax.tree_util.tree_map(np.asarray, trained))
    (out / f"process_{process_id}.json").write_text(json.dumps(facts))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
