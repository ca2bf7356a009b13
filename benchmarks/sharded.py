"""The CNN training step on 8 simulated CPU devices, under Auto and Explicit mesh axes.

JAX fixes its device count when it initialises, so this part runs in a process of its own: ``run``
(called by the runner) starts ``python -m benchmarks.sharded`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and ``JAX_PLATFORMS=cpu`` and reads the JSON
it prints. That process builds ``workloads.cnn``'s step four times, purebp and autodiff under each
axis type, as ``purebp.training.make_train_step(..., mesh=mesh)``; counts the collectives of each
compiled step; compares the steps' losses and updates; and times the four interleaved. The
simulated devices share the machine's cores, so only ratios of times are kept, each from the
samples of the same repeats (``timing.interleaved_seconds``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import optax

from benchmarks import workloads
from benchmarks.report import AUTODIFF, COLLECTIVES, PUREBP, SHARDED, Check, ShardedResult, relative_difference
from benchmarks.timing import Stats, interleaved_seconds
from purebp.training import make_train_step, replicate, shard_batch

DEVICES = 8
AXIS_TYPES = ("Auto", "Explicit")
TINY = dataclasses.replace(workloads.TINY, batch=2 * DEVICES)  # the batch must split evenly over the devices
# Each pair of steps compared, "numerator / denominator": the same model on either system, and the
# same system under either axis type.
PAIRS = {f"{PUREBP} / {AUTODIFF}, {axis}": (f"{PUREBP}, {axis}", f"{AUTODIFF}, {axis}") for axis in AXIS_TYPES}
PAIRS |= {f"Explicit / Auto, {system}": (f"{system}, Explicit", f"{system}, Auto") for system in (PUREBP, AUTODIFF)}
_ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository root, where `benchmarks` imports from


def run(*, tiny: bool, warmup: int, repeats: int, tolerance: float) -> ShardedResult:
    """Measures the four steps in a child process that sees ``DEVICES`` simulated CPU devices."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}".strip()
    environment = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "benchmarks.sharded", "--warmup", str(warmup), "--repeats", str(repeats),
               *(["--tiny"] if tiny else [])]
    # Only stdout is captured: the child's progress and any traceback go straight to the terminal.
    child = subprocess.run(command, cwd=_ROOT, env=environment, stdout=subprocess.PIPE, text=True, check=False)
    if child.returncode:
        raise RuntimeError(f"`{shlex.join(command)}` exited with status {child.returncode}; its error is above.")
    measured = json.loads(child.stdout)
    return ShardedResult(
        label=measured["label"], devices=f"{measured['devices']} (`XLA_FLAGS={flags}`)",
        collectives=measured["collectives"],
        ratios={pair: Stats(**stats) for pair, stats in measured["ratios"].items()},
        checks={pair: Check("loss, updates", difference, tolerance)
                for pair, difference in measured["differences"].items()})


def measure(sizes: workloads.Sizes, *, warmup: int, repeats: int) -> dict:
    """The four steps' collectives, and per pair of steps its time ratios and largest relative difference."""
    workload = workloads.cnn(sizes, np.random.default_rng(0))
    steps = _steps(workload)
    collectives = {}
    for name, (step, args) in steps.items():
        print(f"  compiling {name} ...", file=sys.stderr, flush=True)
        collectives[name] = collective_counts(step.lower(*args).compile().as_text())
    outputs = {name: _updates_and_loss(step, args, workload.params) for name, (step, args) in steps.items()}
    calls = {name: lambda step=step, args=args: jax.block_until_ready(step(*args))
             for name, (step, args) in steps.items()}
    seconds = {name: np.asarray(samples) for name, samples in
               interleaved_seconds(calls, warmup=warmup, repeats=repeats).items()}
    return {
        "label": workload.label,
        "devices": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}), {jax.device_count()} device(s)",
        "collectives": collectives,
        "ratios": {pair: dataclasses.asdict(Stats.of(seconds[a] / seconds[b])) for pair, (a, b) in PAIRS.items()},
        "differences": {pair: relative_difference(outputs[a], outputs[b]) for pair, (a, b) in PAIRS.items()},
    }


def _steps(workload) -> dict:
    """{"purebp, Auto": (step, args), ...}: each step over its mesh, its args already placed there.

    Placing the params, optimizer state and batch once, before timing, keeps the copies out of the
    timed calls: ``make_train_step``'s step keeps an argument that is already where it belongs.
    """
    optimizer = optax.sgd(workloads.LEARNING_RATE, momentum=workloads.MOMENTUM)
    steps = {}
    for axis in AXIS_TYPES:
        mesh = jax.make_mesh((DEVICES,), ("batch",), axis_types=(getattr(jax.sharding.AxisType, axis),))
        args = (replicate(workload.params, mesh), replicate(optimizer.init(workload.params), mesh),
                *shard_batch(workload.batch, mesh))
        for system, loss in ((PUREBP, workload.loss_purebp), (AUTODIFF, workload.loss_autodiff)):
            steps[f"{system}, {axis}"] = (make_train_step(loss, optimizer, mesh=mesh), args)
    return steps


def _updates_and_loss(step, args, params):
    """One step's parameter updates (new − old, as numpy) and its loss."""
    new, _, loss = step(*args)
    return jax.tree_util.tree_map(lambda after, before: np.asarray(after) - np.asarray(before), new, params), loss


def collective_counts(hlo_text: str) -> dict[str, int]:
    """How many ops of each of ``COLLECTIVES`` a compiled program's HLO text holds.

    An async collective is an ``all-reduce-start`` / ``all-reduce-done`` pair: its start counts, its
    done does not. The pattern anchors on the op name and its parenthesis, not on ``= TYPE op(``,
    because a result type can be a tuple with spaces in it.
    """
    return {op: len(re.findall(rf" {op}(?:-start)?\(", hlo_text)) for op in COLLECTIVES}


def main(argv=None) -> None:
    """Prints ``measure``'s JSON; run by ``run``, which sets the device count first."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sharded", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help=f"tiny sizes (batch {TINY.batch}), for a smoke run")
    parser.add_argument("--warmup", type=int, required=True, metavar="N")
    parser.add_argument("--repeats", type=int, required=True, metavar="N")
    args = parser.parse_args(argv)
    if jax.device_count() != DEVICES:
        parser.error(f"needs {DEVICES} devices, got {jax.device_count()}: run it as `python -m benchmarks "
                     f"--only {SHARDED}`, which sets XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}.")
    sizes = TINY if args.tiny else workloads.FULL
    print(json.dumps(measure(sizes, warmup=args.warmup, repeats=args.repeats)))


if __name__ == "__main__":
    main()
