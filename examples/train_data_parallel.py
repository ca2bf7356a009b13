"""A small CNN on 8×8 digits, data-parallel over every device JAX sees.

``ZeroPad(1) → Conv(16, 3×3) → Relu → MaxPool(2) → Conv(32, 3×3, SAME) → Relu → AvgPool(2) →
Flatten → Dense(10)``: every gradient a hand-written VJP, the padding's slice and the average
pool's even spread among them. A one-dimensional mesh spans all devices (of all processes, under
``jax.distributed``). Each batch is split along its examples over the mesh, params and optimizer
state are replicated, and XLA all-reduces the gradients. The test set is evaluated data-parallel
too. On one device it is the same run, step for step. Eight simulated CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/train_data_parallel.py

``--fsdp`` shards the params instead (``training.shard_params``): each weight is split over the
devices along its input features, biases stay replicated, and the optimizer state follows the
params. XLA then gathers each weight for the forward and reduces its gradient to the slices.
``--explicit`` makes the mesh's axis Explicit (sharding in types) instead of Auto. The two combine.

Several hosts, one process per host, each with the same command but its own ``--process-id``:

    python examples/train_data_parallel.py --coordinator-address HOST0:12345 --num-processes 2 --process-id 0
    python examples/train_data_parallel.py --coordinator-address HOST0:12345 --num-processes 2 --process-id 1

On SLURM, Open MPI, Kubernetes or Cloud TPU, ``--distributed`` alone lets ``jax.distributed`` find
its peers.
"""
from __future__ import annotations

import jax
from jax.nn import initializers
from jax.sharding import AxisType

import purebp
from purebp import layers, training

try:
    from . import common  # python -m examples.<name>, from the repository's root
except ImportError:
    import common  # python examples/<name>.py


def model():
    he = initializers.he_normal()  # relu layers: variance 2 / fan_in
    return layers.serial(
        layers.ZeroPad(1),
        layers.Conv(16, 3, padding="VALID", w_init=he), layers.Relu(), layers.MaxPool(2),
        layers.Conv(32, 3, padding="SAME", w_init=he), layers.Relu(), layers.AvgPool(2),
        layers.Flatten(), layers.Dense(10))


def run(*, epochs=15, learning_rate=0.05, batch_size=32, seed=0, mesh=None, fsdp=False, explicit=False,
        checkpoint_dir=None, log=print):
    """Trains the CNN over ``mesh`` (default: every device); returns params, history and throughput.

    ``fsdp`` places the params with ``training.shard_params`` (each weight split over the mesh's
    one axis) instead of replicating them. ``explicit`` makes the default mesh's axis Explicit
    rather than Auto; a ``mesh`` you pass keeps its own axis types, so pass one or the other.
    """
    if mesh is not None and explicit:
        raise ValueError("`explicit` sets the axis type of the default mesh; pass `explicit` or a `mesh`, not both.")
    if mesh is None:
        mesh = training.data_parallel_mesh(axis_type=AxisType.Explicit if explicit else AxisType.Auto)
    x_train, y_train, x_test, y_test = common.digits(images=True)
    devices = mesh.devices.flat[0].platform
    axis_types = "" if set(mesh.axis_types) == {AxisType.Auto} else f" ({', '.join(t.name for t in mesh.axis_types)})"
    log(f"mesh {dict(mesh.shape)}{axis_types}: {mesh.size} {devices} device(s) in {jax.process_count()} process(es); "
        f"batch {batch_size} = {batch_size / mesh.size:g} per device" + ("; params sharded (FSDP)" if fsdp else ""))
    net = model()
    _, params = net.init(jax.random.PRNGKey(seed), x_train.shape)
    if fsdp:  # each weight split along its input features over the mesh; biases replicated
        params = training.shard_params(params, mesh)

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    (params, _, history), seconds = common.train(
        loss, params, (x_train, y_train), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        evaluate_fn=common.metrics_on_test_set(net.apply, x_test, y_test, purebp.softmax_cross_entropy_with_integer_labels,
                                               mesh=mesh),
        log=log, mesh=mesh, checkpoint_dir=checkpoint_dir, title=f"the digits CNN over {mesh.size} device(s)")
    steady = history[1:] or history  # the first epoch includes compilation
    examples_per_second = sum(h["examples_per_second"] for h in steady) / len(steady)
    log(f"test accuracy {history[-1]['test_accuracy']:.2%} in {seconds:.1f}s; {examples_per_second:,.0f} examples/s "
        f"(mean over epochs {steady[0]['epoch']}-{steady[-1]['epoch']})")
    return {"params": params, "history": history, "seconds": seconds, "mesh": mesh,
            "test_accuracy": history[-1]["test_accuracy"], "examples_per_second": examples_per_second}


def main(argv=None):
    cli = common.parser(__doc__.splitlines()[0], epochs=15, learning_rate=0.05, batch_size=32)
    cli.add_argument("--fsdp", action="store_true",
                     help="shard the params over the devices (training.shard_params) instead of replicating them")
    cli.add_argument("--explicit", action="store_true",
                     help="make the mesh's axis Explicit (sharding in types) instead of Auto")
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
                 fsdp=args.fsdp, explicit=args.explicit, checkpoint_dir=args.checkpoint_dir, log=log)
    params = result["params"]
    if args.save and args.fsdp:  # every process joins in gathering the slices, so that process 0 holds them all
        params = training.replicate(params, result["mesh"])
    if jax.process_index() == 0:
        common.save_if_asked(args, params)
    return result


if __name__ == "__main__":
    common.interruptible(main)
