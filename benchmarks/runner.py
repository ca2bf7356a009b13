"""The benchmark runner behind ``python -m benchmarks``: every workload, every system, one page.

For each workload of ``benchmarks.workloads`` it builds the purebp and autodiff versions (and,
on CPU with torch installed, the PyTorch ones), checks once that purebp and autodiff (and, for
ops, PyTorch) compute the same thing, measures compile times and residual bytes, times all
systems interleaved, and writes ``docs/benchmarks.md`` (``benchmarks.report``), a section for each
family of workloads. On CPU it also runs ``benchmarks.sharded``, the CNN
step on 8 simulated devices under Auto and Explicit mesh axes, in a process of its own, into a
section of its own. Timings are never asserted: the runner is run by hand;
``tests/test_benchmarks.py`` runs it on tiny sizes.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import pathlib
import platform
import shlex
import sys

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from benchmarks import report, sharded, workloads
from benchmarks.report import (AUTODIFF, BACKWARD, FWD_BWD, JAX, JAX_NN, MATMUL, PUREBP, SHARDED, STEP, TORCH,
                               Check, Footprint, Result, relative_difference)
from benchmarks.timing import compile_seconds, time_interleaved
from purebp.testing import residual_bytes
from purebp.training import make_train_step

DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
# Largest relative difference between purebp and autodiff that passes the sanity checks. float32
# on CPU agrees to ~1e-6 (reordered sums); GPUs may run float32 matmuls and convolutions in TF32
# (10-bit mantissa), where 1e-3 differences are ordinary.
CPU_TOLERANCE, ACCELERATOR_TOLERANCE = 1e-4, 2e-2
# The most that a JAX system's jitted attention fwd+bwd may need (XLA's temporaries, arguments and
# outputs, from memory_analysis) to be run: beyond it the program is compiled and reported, never
# run, so that autodiff's N×N arrays cannot take the machine's memory (23 GiB when this was written).
MEMORY_LIMIT = 16 * 2 ** 30


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Times purebp against JAX autodiff (and PyTorch eager on CPU) and writes docs/benchmarks.md.")
    parser.add_argument("--repeats", type=_positive_int, default=None, metavar="N",
                        help="timed calls per system (default 30; 3 with --tiny); attention's long sequences "
                             "take fewer, their own (benchmarks.workloads.Sizes.attention)")
    parser.add_argument("--warmup", type=_non_negative_int, default=None, metavar="N",
                        help="untimed calls per system first (default 5; 1 with --tiny)")
    parser.add_argument("--only", nargs="+", choices=(*workloads.NAMES, SHARDED), metavar="NAME",
                        help=f"run only these workloads, of: {', '.join(workloads.NAMES)}, and {SHARDED} "
                             "(the CNN step on 8 simulated CPU devices, which a run without --only includes on CPU)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, for a smoke run; writes no page unless --output is given")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU mode: purebp and autodiff only (automatic where JAX's default backend is a GPU)")
    parser.add_argument("--output", type=pathlib.Path, default=None, metavar="PATH",
                        help=f"the page to write (default {DEFAULT_OUTPUT.relative_to(DEFAULT_OUTPUT.parents[1])})")
    args = parser.parse_args(argv)
    if args.gpu and jax.default_backend() != "gpu":
        parser.error(f"--gpu needs a GPU, but JAX's default backend is {jax.default_backend()!r}.")
    if args.repeats is None:
        args.repeats = 3 if args.tiny else 30
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 5
    return args


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def main(argv=None) -> int:
    """Runs the benchmarks named by ``argv`` (``sys.argv[1:]`` if None); 1 if a sanity check failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    backend = jax.default_backend()
    # The simulated devices are CPU devices: a GPU run leaves their section to a CPU run unless asked.
    names = args.only or (*workloads.NAMES, *((SHARDED,) if backend == "cpu" else ()))
    sections, failed = {}, []
    if set(names) & set(workloads.NAMES):
        sections, failed = _single_device(argv, args, backend, names)
    if SHARDED in names:
        sections[SHARDED], sharded_failed = _sharded(argv, args)
        failed += sharded_failed
    for text in sections.values():
        print(text)
    output = args.output or (None if args.tiny else DEFAULT_OUTPUT)
    if output:
        existing = output.read_text() if output.exists() else ""
        output.write_text(report.page(sections, existing))
        print(f"written to {output}", file=sys.stderr)
    if failed:
        print(f"sanity checks FAILED: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _single_device(argv, args, backend, names):
    """The backend's sections, one per family of the workloads of ``names``, and the sanity checks that failed.

    Each family is measured apart, with its own load averages, so that its section says how busy
    the machine was while it ran.
    """
    torch_eager = _torch_eager(backend)
    sizes = workloads.TINY if args.tiny else workloads.FULL
    chosen = [w for w in workloads.all_workloads(sizes) if w.name in names]
    tolerance = CPU_TOLERANCE if backend == "cpu" else ACCELERATOR_TOLERANCE
    sections, failed = {}, []
    for family, members in workloads.FAMILIES.items():
        if not set(members) & set(names):
            continue
        load_before = _load_average()
        results = {}
        for workload in (w for w in chosen if w.name in members):
            print(f"{workload.label} ...", file=sys.stderr, flush=True)
            results[workload.name] = run_workload(workload, torch_eager, args, tolerance)
        environment = _environment(argv, args, torch_eager, load_before)
        failed += [f"{r.name}: {c.what}" for r in results.values() for c in r.checks if not c.ok]
        section = report.section_name(backend, family)
        if family == "attention":
            environment["timing"] = (f"at most {args.warmup} warm-up calls, then at most {args.repeats} interleaved "
                                     "repeats per system: fewer where a call takes seconds (each workload's repeats "
                                     "are in its table)")
            sections[section] = report.attention_section(section, results, environment, tiny=args.tiny,
                                                         memory_limit=MEMORY_LIMIT, tolerance=tolerance)
        else:
            sections[section] = report.section(section, results, environment, tiny=args.tiny)
    return sections, failed


def _sharded(argv, args):
    """The section of the CNN step on 8 simulated CPU devices, and the sanity checks that failed."""
    print(f"{SHARDED}: the CNN step on {sharded.DEVICES} simulated devices, Auto and Explicit axes ...",
          file=sys.stderr, flush=True)
    load_before = _load_average()
    result = sharded.run(tiny=args.tiny, warmup=args.warmup, repeats=args.repeats, tolerance=CPU_TOLERANCE)
    environment = _environment(argv, args, None, load_before)
    environment["JAX device"] = result.devices  # the child's devices, not this process's one
    environment.pop("XLA_FLAGS", None)  # result.devices holds the child's
    failed = [f"{SHARDED}: {pair}" for pair, check in result.checks.items() if not check.ok]
    return report.sharded_section(result, environment, tiny=args.tiny), failed


def _torch_eager(backend):
    """benchmarks.torch_eager, configured, on CPU where torch is installed; otherwise None."""
    if backend != "cpu" or importlib.util.find_spec("torch") is None:
        return None
    torch_eager = importlib.import_module("benchmarks.torch_eager")
    torch_eager.configure()
    return torch_eager


def run_workload(workload, torch_eager, args, tolerance) -> Result:
    if isinstance(workload, workloads.MatmulWorkload):
        return _run_matmul(workload, torch_eager, args)
    if isinstance(workload, workloads.StepWorkload):
        return _run_step(workload, torch_eager, args, tolerance)
    if isinstance(workload, workloads.AttentionWorkload):
        return _run_attention(workload, torch_eager, args, tolerance)
    return _run_op(workload, torch_eager, args, tolerance)


def _blocking(fn, *args):
    """A call of ``fn(*args)`` that waits for the result (JAX dispatches asynchronously)."""
    return lambda: jax.block_until_ready(fn(*args))


def _run_matmul(workload, torch_eager, args):
    calls = {(MATMUL, JAX): _blocking(jax.jit(jnp.matmul), workload.a, workload.b)}
    if torch_eager:
        calls[(MATMUL, report.TORCH_LAYOUTS["NCHW"])] = torch_eager.matmul(workload.a, workload.b)
    return Result(workload, times=time_interleaved(calls, warmup=args.warmup, repeats=args.repeats))


def _run_step(workload, torch_eager, args, tolerance):
    optimizer = optax.sgd(workloads.LEARNING_RATE, momentum=workloads.MOMENTUM)
    params, batch = workload.params, workload.batch
    opt_state = optimizer.init(params)
    steps = {PUREBP: make_train_step(workload.loss_purebp, optimizer),
             AUTODIFF: make_train_step(workload.loss_autodiff, optimizer)}
    result = Result(workload)
    result.compile_seconds = {(STEP, system): compile_seconds(step, params, opt_state, *batch)
                              for system, step in steps.items()}
    (mine, _, my_loss), (theirs, _, their_loss) = (step(params, opt_state, *batch) for step in steps.values())
    updates = [jax.tree_util.tree_map(jnp.subtract, new, params) for new in (mine, theirs)]
    result.checks.append(Check("vs autodiff (loss, updates)",
                               max(relative_difference(my_loss, their_loss), relative_difference(*updates)),
                               tolerance))
    result.residual_bytes = {PUREBP: _residual_bytes(workload.loss_purebp, params, *batch),
                             AUTODIFF: _residual_bytes(workload.loss_autodiff, params, *batch)}
    calls = {(STEP, system): _blocking(step, params, opt_state, *batch) for system, step in steps.items()}
    if torch_eager:
        torch_losses = []
        for system, (step, loss) in _torch_steps(workload, torch_eager).items():
            calls[(STEP, system)] = step
            torch_losses.append(relative_difference(loss, my_loss))
        result.checks.append(Check("PyTorch initial loss", max(torch_losses), tolerance))
    result.times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)
    return result


def _torch_steps(workload, torch_eager):
    """{system: (step, initial loss)} of the PyTorch versions of a step workload."""
    hyper = (workloads.LEARNING_RATE, workloads.MOMENTUM)
    if workload.name == "mlp":
        return {report.TORCH_LAYOUTS["NCHW"]: torch_eager.mlp_step(workload.params, *workload.batch, *hyper)}
    return {system: torch_eager.cnn_step(workload.params, *workload.batch, *hyper, layout)
            for layout, system in report.TORCH_LAYOUTS.items()}


def _run_op(workload, torch_eager, args, tolerance):
    functions = {PUREBP: workload.purebp, AUTODIFF: workload.autodiff}
    inputs, argnums = workload.args, workload.argnums
    out = jax.eval_shape(workload.purebp, *inputs)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), out.dtype)
    # backward alone: the VJP function, a pytree whose leaves are the residuals, applied to g. The
    # residuals come from a jitted forward, as in a training step (and with no eager compiles).
    # fwd+bwd returns the output with the cotangents: a training step uses both, and XLA would
    # otherwise drop whatever of the forward pass the backward does not read. Every arg, held ones
    # too, is an argument of the jitted functions: a key closed over as a constant would let XLA
    # fold dropout's mask into the program.
    apply_vjp = jax.jit(lambda vjp_fn, g: vjp_fn(g))
    vjp_fns = {system: jax.jit(lambda inputs, f=f: _vjp(f, inputs, argnums)[1])(inputs)
               for system, f in functions.items()}
    forward_backward = {system: jax.jit(lambda inputs, g, f=f: _output_and_cotangents(f, inputs, argnums, g))
                        for system, f in functions.items()}
    result = Result(workload)
    for system in functions:
        result.compile_seconds[(BACKWARD, system)] = compile_seconds(apply_vjp, vjp_fns[system], g)
        result.compile_seconds[(FWD_BWD, system)] = compile_seconds(forward_backward[system], inputs, g)
    mine, theirs = (forward_backward[system](inputs, g) for system in functions)
    result.checks.append(Check("vs autodiff (output, cotangents)", relative_difference(mine, theirs), tolerance))
    result.residual_bytes = {system: _residual_bytes(_of_differentiated(f, inputs, argnums),
                                                     *(inputs[i] for i in argnums))
                             for system, f in functions.items()}
    calls = {}
    for system in functions:
        calls[(BACKWARD, system)] = _blocking(apply_vjp, vjp_fns[system], g)
        calls[(FWD_BWD, system)] = _blocking(forward_backward[system], inputs, g)
    if torch_eager:
        differences = []
        for layout, system in _torch_layouts(workload):
            backward, both, torch_results = torch_eager.op_passes(workload.op, inputs, argnums,
                                                                  workload.torch_options, g, layout)
            calls[(BACKWARD, system)], calls[(FWD_BWD, system)] = backward, both
            differences.append(relative_difference(torch_results, mine))
        if workload.torch_checked:
            result.checks.append(Check("vs PyTorch (output, cotangents)", max(differences), tolerance))
    result.times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)
    return result


def _run_attention(workload, torch_eager, args, tolerance):
    """fwd+bwd of purebp, autodiff, jax.nn and PyTorch; each JAX system's footprint, and a run where it fits.

    Only fwd+bwd is timed: at 16k a call takes seconds. The warm-up calls shrink with the
    workload's repeats (the sanity check's call, untimed, warms each system up once more).
    """
    functions = {PUREBP: workload.purebp, AUTODIFF: workload.autodiff, JAX_NN: workload.jax_nn}
    inputs, argnums = workload.args, (0, 1, 2)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(inputs[0].shape), inputs[0].dtype)
    result, calls, outputs = Result(workload), {}, {}
    for system, f in functions.items():
        forward_backward = jax.jit(lambda inputs, g, f=f: _output_and_cotangents(f, inputs, argnums, g))
        result.compile_seconds[(FWD_BWD, system)] = compile_seconds(forward_backward, inputs, g)
        # from jit's cache: the program just compiled
        result.footprints[system] = Footprint.of(forward_backward.lower(inputs, g).compile())
        result.residual_bytes[system] = _residual_bytes(f, *inputs)
        if result.footprints[system].total <= MEMORY_LIMIT:
            calls[(FWD_BWD, system)] = _blocking(forward_backward, inputs, g)
            outputs[system] = forward_backward(inputs, g)
    if torch_eager:
        calls[(FWD_BWD, TORCH[0])], outputs[TORCH[0]] = torch_eager.attention_passes(*inputs, g, workload.is_causal)
    mine = outputs.pop(PUREBP)
    result.checks = [Check(f"vs {system} (output, cotangents)", relative_difference(mine, theirs), tolerance)
                     for system, theirs in outputs.items()]
    result.repeats = min(args.repeats, workload.repeats)
    result.times = time_interleaved(calls, warmup=args.warmup * result.repeats // args.repeats,
                                    repeats=result.repeats)
    return result


def _vjp(f, args, argnums):
    """``jax.vjp`` of ``f`` at ``args`` with respect to the args at ``argnums``."""
    return jax.vjp(_of_differentiated(f, args, argnums), *(args[i] for i in argnums))


def _output_and_cotangents(f, args, argnums, g):
    """fwd+bwd: ``f``'s output at ``args``, and the cotangents of the args at ``argnums`` for ``g``."""
    y, vjp_fn = _vjp(f, args, argnums)
    return y, vjp_fn(g)


def _of_differentiated(f, args, argnums):
    """``f`` as a function of the args at ``argnums`` alone, the others held at their values in ``args``."""
    def of_differentiated(*differentiated):
        every = list(args)
        for i, value in zip(argnums, differentiated, strict=True):
            every[i] = value
        return f(*every)

    return of_differentiated


def _torch_layouts(workload):
    """The (layout, system) pairs of ``report.TORCH_LAYOUTS`` that the op runs in: both for images, else the default."""
    pairs = list(report.TORCH_LAYOUTS.items())
    return pairs if np.ndim(workload.args[0]) == 4 else pairs[:1]


def _residual_bytes(fn, *args) -> int:
    """``purebp.testing.residual_bytes``, evaluated abstractly.

    It reads only the residuals' shapes and dtypes, which tracing gives without running anything;
    run eagerly it would compile every primitive of the model one by one (seconds).
    """
    counted = []
    jax.eval_shape(lambda *args: counted.append(residual_bytes(fn, *args)), *args)
    return counted[0]


def _environment(argv, args, torch_eager, load_before) -> dict:
    device = jax.devices()[0]
    versions = (f"Python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
                f"optax {optax.__version__}, numpy {np.__version__}, "
                + (f"torch {torch_eager.version()}" if torch_eager else "torch not used"))
    environment = {
        "command": f"`{shlex.join(['python', '-m', 'benchmarks', *argv])}` (from the repository root)",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}, {_cpu_model()}, {os.cpu_count()} cores (`os.cpu_count()`)",
        "JAX device": f"{device.platform} ({device.device_kind}), {jax.device_count()} device(s)",
        "versions": versions,
        "timing": f"{args.warmup} warm-up calls, then {args.repeats} interleaved repeats per system",
        "load average (1 minute)": f"{load_before} at the start, {_load_average()} at the end",
    }
    if torch_eager:
        environment["PyTorch threads"] = str(torch_eager.threads())
    if os.environ.get("XLA_FLAGS"):
        environment["XLA_FLAGS"] = f"`{os.environ['XLA_FLAGS']}`"
    return environment


def _load_average():
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def _cpu_model():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
