"""The CNN of train_cnn.py on 8×8 digits, data-parallel over every device JAX sees.

A one-dimensional mesh spans all devices (of all processes, under ``jax.distributed``). Each batch
is split along its examples over the mesh, params and optimizer state are replicated, and XLA
all-reduces the gradients, which are hand-written VJPs all the way down. On one device this is
train_cnn.py, step for step. Eight simulated CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/train_data_parallel.py

Several hosts, one process per host, each with the same command but its own ``--process-id``:

    python examples/train_data_parallel.py --coordinator-address HOST0:12345 --num-processes 2 --process-id 0
    python examples/train_data_parallel.py --coordinator-address HOST0:12345 --num-processes 2 --process-id 1

On SLURM, Open MPI, Kubernetes or Cloud TPU, ``--distributed`` alone lets ``jax.distributed`` find
its peers.
"""
from __future__ import annotations

import jax

import purebp
from purebp import training

import common
import train_cnn


def run(*, epochs=15, learning_rate=0.05, batch_size=32, seed=0, mesh=None, log=print):
    """Trains the CNN over ``mesh`` (default: every device); returns params, history and throughput."""
    mesh = training.data_parallel_mesh() if mesh is None else mesh
    x_train, y_train, x_test, y_test = common.digits(images=True)
    devices = mesh.devices.flat[0].platform
    log(f"mesh {dict(mesh.shape)}: {mesh.size} {devices} device(s) in {jax.process_count()} process(es); "
        f"batch {batch_size} = {batch_size / mesh.size:g} per device")
    net = train_cnn.model()
    _, params = net.init(jax.random.PRNGKey(seed), x_train.shape)

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    params, history, seconds = common.train(
        loss, params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        evaluate_fn=common.metrics_on_test_set(net.apply, x_test, y_test, purebp.softmax_cross_entropy_with_integer_labels),
        log=log, mesh=mesh)
    steady = history[1:] or history  # the first epoch includes compilation
    examples_per_second = sum(h["examples_per_second"] for h in steady) / len(steady)
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s; {examples_per_second:,.0f} examples/s "
        f"(mean over epochs {steady[0]['epoch']}-{steady[-1]['epoch']})")
    return {"params": params, "history": history, "seconds": seconds, "mesh": mesh,
            "test_accuracy": history[-1]["test_accuracy"], "examples_per_second": examples_per_second}


def main(argv=None):
    cli = common.parser(__doc__.splitlines()[0], epochs=15, learning_rate=0.05, batch_size=32)
    cli.add_argument("--distributed", action="store_true",
                     help="call jax.distributed.initialize() first (implied by the three options below)")
    cli.add_argument("--coordinator-address", metavar="HOST:PORT",
                     help="process 0's address, the same for every process (default: $JAX_COORDINATOR_ADDRESS)")
    cli.add_argument("--num-processes", type=int, metavar="N", help="processes in all, one per host")
    cli.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")
    args = cli.parse_args(argv)
    cluster = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(option is not None for option in cluster):
        jax.distributed.initialize(*cluster)  # before anything touches a device
    log = print if jax.process_index() == 0 else (lambda line: None)  # one process speaks
    result = run(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
                 log=log)
    if jax.process_index() == 0:
        common.save_if_asked(args, result["params"])
    return result


if __name__ == "__main__":
    main()
