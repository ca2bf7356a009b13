"""The benchmark page: results, the issue's targets, and markdown.

The page has a fixed header (systems, method, how to run) and named sections between
``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers: one per JAX backend and family of
workloads (``cpu`` and ``gpu`` for the first family, ``cpu_second`` and ``gpu_second`` for the
second, ``cpu_attention`` and ``gpu_attention`` for attention: see ``section_name``) and
``SHARDED``, the CNN step on 8 simulated CPU devices. A run
replaces the sections it measured and keeps the others, so the CPU and GPU measurements, taken on
different machines, share one page, ``--only gelu silu`` leaves the first family's tables as they
are, and ``--only cnn_sharded`` the single-device tables.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import jax
import numpy as np

from benchmarks.timing import Stats
from benchmarks.workloads import FAMILIES

PUREBP, AUTODIFF, JAX = "purebp", "autodiff", "JAX"
JAX_NN = "jax.nn"  # jax.nn.dot_product_attention(implementation="xla"), the attention family's third JAX system
ATTENTION_JAX = (PUREBP, AUTODIFF, JAX_NN)
# PyTorch's systems by memory format: its default (NCHW for images, plain row-major otherwise) and
# channels-last (NHWC in memory), which only image workloads have.
TORCH_LAYOUTS = {"NCHW": "PyTorch", "channels-last": "PyTorch channels-last"}
TORCH = tuple(TORCH_LAYOUTS.values())
PYTORCH_BEST = "PyTorch best"  # the faster of TORCH, for ratios
STEP, MATMUL, BACKWARD, FWD_BWD = "step", "matmul", "backward", "fwd+bwd"
SHARDED = "cnn_sharded"  # the 8-simulated-device CNN step: its --only name and its page section
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
MISSING = "—"


@dataclass(frozen=True)
class Check:
    """A sanity check: the largest difference of ``what``, relative to the largest magnitude."""

    what: str
    difference: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.difference <= self.tolerance


def relative_difference(actual, expected) -> float:
    """max over leaves of max |actual − expected| / max |expected|: differences at the leaf's own scale."""
    worst = 0.0
    for got, want in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        scale = np.max(np.abs(want), initial=0.0) or 1.0
        worst = max(worst, float(np.max(np.abs(got - want), initial=0.0)) / scale)
    return worst


@dataclass(frozen=True)
class Footprint:
    """A compiled program's buffers, from its ``memory_analysis()``: XLA's temporaries, and all it needs."""

    temp: int
    total: int  # temporaries, arguments and outputs

    @classmethod
    def of(cls, compiled) -> Footprint:
        memory = compiled.memory_analysis()
        return cls(memory.temp_size_in_bytes,
                   memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes)


@dataclass
class Result:
    """One workload's measurements; ``times`` and ``compile_seconds`` are keyed by (pass, system)."""

    workload: object
    times: dict = field(default_factory=dict)
    compile_seconds: dict = field(default_factory=dict)
    residual_bytes: dict = field(default_factory=dict)  # system -> bytes
    checks: list = field(default_factory=list)
    footprints: dict = field(default_factory=dict)  # system -> Footprint of its jitted fwd+bwd (attention)
    repeats: int | None = None  # timed calls per system, where fewer than the run's (attention)

    @property
    def name(self) -> str:
        return self.workload.name

    def median(self, pass_, system):
        stats = self.times.get((pass_, system))
        return stats.median if stats else None

    def torch_best(self, pass_):
        medians = [m for m in (self.median(pass_, system) for system in TORCH) if m is not None]
        return min(medians, default=None)

    def ratio(self, pass_, other):
        """purebp's median time over ``other``'s (a system, or PYTORCH_BEST); None if either is missing."""
        mine = self.median(pass_, PUREBP)
        theirs = self.torch_best(pass_) if other == PYTORCH_BEST else self.median(pass_, other)
        return mine / theirs if mine is not None and theirs else None


@dataclass(frozen=True)
class ShardedResult:
    """The CNN step on simulated devices (``benchmarks.sharded``), four steps: "purebp, Auto" and so on.

    ``collectives`` maps each step to {collective: count in its compiled program}; ``ratios`` and
    ``checks`` map each pair of steps compared, e.g. "purebp / autodiff, Auto", to the Stats of its
    per-repeat time ratio and to the Check of its loss and updates.
    """

    label: str
    devices: str  # as the environment's "JAX device" line
    collectives: dict
    ratios: dict
    checks: dict


HEADER = """\
# Benchmarks

Written by the benchmark runner, `python -m benchmarks` (the package `benchmarks/`): re-run it
rather than editing this page. A run replaces the sections it measured below and keeps the others.
Each JAX backend, CPU or GPU, has a section for each family of workloads: the first (the models,
pools and convolutions), the second (activations, normalization, dropout and embedding, on
(8192, 1024)) and attention (`dot_product_attention` from 1k to 32k positions, with its own method
and memory tables); on CPU there is also the one of 8 simulated devices.

Which formulation each backward rule uses, and for every missed target the profile that explains it
and what was tried: [performance.md](performance.md).

**Systems**, all float32, one process:

- **purebp**: purebp's ops and layers, whose VJPs are written by hand; the steps are
  `purebp.training.make_train_step` (jitted) with `optax.sgd(0.01, momentum=0.9)`.
- **autodiff**: the same models and ops built from `purebp.reference`'s plain-jnp twins, over the
  same parameters, differentiated by JAX's own autodiff (jitted, same optimizer).
- **PyTorch** (CPU only): eager `torch.nn` / `torch.nn.functional`, `torch.optim.SGD(lr=0.01,
  momentum=0.9)`, the same weights and data; images in both memory formats, NCHW (the default)
  and channels-last (`torch.channels_last`), and "PyTorch best" is the faster of the two. Its
  threads are set to the core count, as XLA uses, with `OMP_WAIT_POLICY=PASSIVE` (unless set
  otherwise) so that its idle threads do not spin into the next system's timing.

**Method.** Every system of a workload is timed in the same loop, after warm-up calls: each repeat
calls each system once, cycling through every order of the systems (so each follows each other
equally often). Times are the median and, in brackets, the 10th-90th percentiles, in milliseconds. Ratios are of medians, purebp's time over the other's: below 1 means
purebp is faster. For ops, *backward* is the VJP function alone applied to a cotangent, its
residuals computed beforehand (PyTorch: `autograd.grad` on a retained graph), and *fwd+bwd* is
`jax.vjp` and the cotangent in one jitted function that returns the output and the cotangents
(PyTorch: the op, then `autograd.grad`). Both are taken with respect to every input but dropout's
key and embedding's ids, and for batch_norm's y alone, not its new statistics. *Compile* is trace +
lower + compile of the jitted function. *Residual bytes* is `purebp.testing.residual_bytes`: what
the backward pass keeps alive between forward and backward (models: the loss as a function of the
parameters and the batch). *Check* is the largest difference between purebp's output and
cotangents and autodiff's, and PyTorch's (for steps: loss and parameter updates of one step, and
PyTorch's initial loss), relative to the largest magnitude; it must stay under 1e-4 on CPU (2e-2 on
accelerators, which may run float32 matmuls in TF32) for the run to succeed. PyTorch's are not
checked where it does the same work on other numbers: dropout (its own random mask), the 3×3/2 pool
(torch pads both sides where SAME pads the end) and conv_transpose (torch flips the kernel and crops
the output one step further on).

The machine is often shared: the load average is recorded with each run. Above the core count,
every system slows, PyTorch's most (its OpenMP threads wait for each other at every parallel
region, which can multiply a median several times over while its 10th percentile stays near the
quiet figure); compare ratios within one run, and re-run on a quiet machine for figures to quote.

**Running it** from the repository root:

```bash
pip install -e ".[bench]"        # torch==2.13.0; from PyPI on Linux that is the CUDA build:
                                 # add --extra-index-url https://download.pytorch.org/whl/cpu for the CPU wheel
python -m benchmarks             # CPU: purebp, autodiff and PyTorch; writes docs/benchmarks.md
python -m benchmarks --gpu       # where JAX sees a GPU (jax[cuda]): purebp and autodiff, no PyTorch
python -m benchmarks --only cnn conv_second --repeats 50 --output /tmp/benchmarks.md
python -m benchmarks --only cnn_sharded --repeats 240   # only the CNN step on 8 simulated devices
python -m benchmarks --only gelu layer_norm dropout     # some of the second family: its section alone
python -m benchmarks --only attention_1k attention_1k_causal   # some of the attention family (all: ~15 min)
python -m benchmarks --tiny      # a smoke run on tiny sizes: prints the tables, writes nothing
```
"""

_SECTION = re.compile(r"<!-- BEGIN (\w+) -->\n.*?<!-- END \1 -->\n", re.DOTALL)
_SECOND = "the second family: activations, normalization, dropout and embedding"
_ATTENTION = "attention: dot_product_attention against autodiff, jax.nn and PyTorch"
_TITLES = {"cpu": "CPU", "gpu": "GPU", "tpu": "TPU", "cpu_second": f"CPU, {_SECOND}",
           "gpu_second": f"GPU, {_SECOND}", "cpu_attention": f"CPU, {_ATTENTION}",
           "gpu_attention": f"GPU, {_ATTENTION}", SHARDED: "CPU, 8 simulated devices: Auto and Explicit mesh axes"}
# The sections every page shows, in this order, with how to fill each; any other comes after them.
_HOW_TO_MEASURE = {
    "cpu": "run `python -m benchmarks` on a machine where JAX's default backend is the CPU",
    "cpu_second": "run `python -m benchmarks` (or `--only` some of its ops) on a machine where JAX's default "
                  "backend is the CPU",
    "cpu_attention": "run `python -m benchmarks` (or `--only` some of its sizes) on a machine where JAX's "
                     "default backend is the CPU",
    SHARDED: f"run `python -m benchmarks --only {SHARDED}` (or all of `python -m benchmarks` on CPU)",
    "gpu": "run `python -m benchmarks --gpu` on a machine where JAX's default backend is the GPU",
    "gpu_second": "run `python -m benchmarks --gpu` on a machine where JAX's default backend is the GPU",
    "gpu_attention": "run `python -m benchmarks --gpu` on a machine where JAX's default backend is the GPU",
}


def section_name(backend: str, family: str) -> str:
    """The section of ``backend``'s measurements of one family of ``FAMILIES``: ``cpu``, ``cpu_second``, ..."""
    return backend if family == "first" else f"{backend}_{family}"


def page(sections: dict[str, str], existing: str = "") -> str:
    """The whole page: the header, ``sections`` ({name: markdown}), and the other sections of ``existing``."""
    kept = {match.group(1): match.group(0) for match in _SECTION.finditer(existing)}
    for name, how in _HOW_TO_MEASURE.items():
        kept.setdefault(name, _wrap(name, f"## {_TITLES[name]}\n\nNot measured yet: {how}."))
    kept.update({name: _wrap(name, body) for name, body in sections.items()})
    order = list(_HOW_TO_MEASURE)
    names = sorted(kept, key=lambda name: order.index(name) if name in order else len(order))
    return HEADER + "".join("\n" + kept[name] for name in names)


def _wrap(name, body):
    return f"<!-- BEGIN {name} -->\n{body.rstrip()}\n<!-- END {name} -->\n"


def section(name: str, results: dict, environment: dict, *, tiny: bool) -> str:
    """The section ``name`` (see ``section_name``): where and how it was measured, then the tables."""
    lines = _heading(_TITLES.get(name, name), environment, tiny)
    tables = [
        ("Targets", _targets_table(results)),
        ("Training steps", _steps_table(results)),
        ("MLP step throughput", _throughput_table(results)),
        ("Ops", _ops_table(results)),
        ("Residual bytes", _residuals_table(results)),
        ("Compile times", _compile_table(results)),
    ]
    for heading, table in tables:
        if table:
            lines += ["", f"### {heading}", "", *table]
    return "\n".join(lines) + "\n"


_SHARDED_METHOD = """\
The CNN step of the CPU section ({label}) as `make_train_step(loss, optax.sgd(0.01, momentum=0.9),
mesh=mesh)`, `mesh = jax.make_mesh((8,), ("batch",), axis_types=(AxisType.Auto,))` or
`(AxisType.Explicit,)`: the batch split over the 8 devices, params and optimizer state replicated,
for purebp and for autodiff. The devices are simulated (`--xla_force_host_platform_device_count=8`,
in a process of their own) and share the machine's cores, so their times say nothing about 8 real
devices: only ratios are reported (and the load average at the end counts the devices' own threads:
the one at the start says how busy the machine was). The four steps are timed interleaved; each
ratio is the median (10th-90th percentiles) of the per-repeat ratios, a repeat calling every step
once. *Check* is the largest relative difference of the two steps' loss and parameter updates (the
run fails above {tolerance}). *Collectives* are the ops of each kind in
`step.lower(params, opt_state, *batch).compile().as_text()` (an async pair counts once)."""


def sharded_section(result: ShardedResult, environment: dict, *, tiny: bool) -> str:
    """The CNN step on simulated devices: what was run, the time ratios with their checks, the collectives."""
    tolerance = max(check.tolerance for check in result.checks.values())
    method = _SHARDED_METHOD.format(label=result.label,
                                    tolerance=np.format_float_scientific(tolerance, trim="-", exp_digits=1))
    ratio_rows = [[pair, _ratio(stats), _check(result.checks[pair])] for pair, stats in result.ratios.items()]
    collective_rows = [[step, *(str(counts[op]) for op in COLLECTIVES)]
                       for step, counts in result.collectives.items()]
    lines = [*_heading(_TITLES[SHARDED], environment, tiny), "", method]
    lines += ["", "### Time ratios", "", *_table(["ratio", "median (p10–p90)", "check"], ratio_rows)]
    lines += ["", "### Collectives", "", *_table(["step", *COLLECTIVES], collective_rows)]
    return "\n".join(lines) + "\n"


_ATTENTION_METHOD = """\
Self-attention, `dot_product_attention(q, k, v, is_causal=...)` on float32 arrays of one shape,
(B, N, heads, H) with H = 64, differentiated with respect to all three. Systems: **purebp** (its
blockwise rule, default blocks), **autodiff** of its twin `purebp.reference.dot_product_attention`
(softmax(s·QKᵀ)V in plain jnp), **jax.nn** (`jax.nn.dot_product_attention(implementation="xla")`:
autodiff of JAX's own code) and, on CPU, **PyTorch** (`F.scaled_dot_product_attention` on the same
arrays, contiguous in (B, heads, N, H): its blockwise CPU kernel). *fwd+bwd* is one jitted function
that returns the output and the three cotangents (PyTorch: the op, then `autograd.grad`), timed
interleaved as in the other sections, with fewer repeats where a call takes seconds. *Temp* is
`temp_size_in_bytes` of the compiled fwd+bwd's `memory_analysis()`: XLA's temporaries, where the
residuals and any N×N array live. A JAX system whose temporaries, arguments and outputs would
exceed {limit} GiB is compiled but not run: its cells say what it would need. *Residuals* is
`purebp.testing.residual_bytes`, what a training step keeps from forward to backward; purebp's
target is q, k, v, o and L (one float32 per batch entry, head and query row), exactly. *Check* is
the largest difference of purebp's output and cotangents from each other system's that ran,
relative to the largest magnitude (the run fails above {tolerance})."""
# Issue 16's targets, each purebp's figure over autodiff's: residual bytes, XLA temp bytes, fwd+bwd time.
RESIDUALS_TARGET, TEMP_TARGET, TIME_TARGET = 0.12, 0.2, 1.0


def attention_section(name: str, results: dict, environment: dict, *, tiny: bool, memory_limit: int,
                      tolerance: float) -> str:
    """The attention family's section: what was run, the targets, fwd+bwd times, memory and compile times."""
    method = _ATTENTION_METHOD.format(limit=f"{memory_limit / 2 ** 30:g}",
                                      tolerance=np.format_float_scientific(tolerance, trim="-", exp_digits=1))
    lines = [*_heading(_TITLES.get(name, name), environment, tiny), "", method]
    for heading, table in (("Targets", _attention_targets(results)), ("fwd+bwd", _attention_times(results)),
                           ("Memory (MiB)", _attention_memory(results)),
                           ("Compile times (s)", _attention_compile(results))):
        lines += ["", f"### {heading}", "", *table]
    return "\n".join(lines) + "\n"


def _attention_targets(results):
    rows = []
    for r in results.values():
        mine, blockwise = r.residual_bytes[PUREBP], r.workload.blockwise_residual_bytes
        residuals = _of_autodiff(mine, r.residual_bytes[AUTODIFF])
        temp = _of_autodiff(r.footprints[PUREBP].temp, r.footprints[AUTODIFF].temp)
        time = r.ratio(FWD_BWD, AUTODIFF)
        rows.append([r.workload.label, f"{_mib(mine)}: {'met' if mine == blockwise else 'missed'}",
                     _target(residuals, RESIDUALS_TARGET), _target(temp, TEMP_TARGET),
                     _target(time, TIME_TARGET) if time is not None else f"{MISSING} (autodiff not run)"])
    header = ["workload", "residuals = q, k, v, o + L", f"residuals ≤ {RESIDUALS_TARGET:g}× autodiff",
              f"temp ≤ {TEMP_TARGET:g}× autodiff", f"fwd+bwd ≤ {TIME_TARGET:g}× autodiff"]
    return _table(header, rows)


def _of_autodiff(mine, theirs):
    return mine / theirs if theirs else None


def _target(ratio, limit):
    return f"{_times(ratio)}: {_verdict(ratio, ratio is not None and ratio <= limit)}"


def _attention_times(results):
    systems = [*ATTENTION_JAX, TORCH[0]]
    rows = []
    for r in results.values():
        times = [_ms(r.times[(FWD_BWD, s)]) if (FWD_BWD, s) in r.times else _not_run(r, s) for s in systems]
        rows.append([r.workload.label, str(r.repeats), *times,
                     *(_times(r.ratio(FWD_BWD, s)) for s in systems[1:]), _checks(r)])
    header = ["workload", "repeats", *(f"{s} (ms)" for s in systems), *(f"purebp / {s}" for s in systems[1:]),
              "check"]
    return _table(header, rows)


def _not_run(result, system):
    """Why ``system`` has no time: the memory its program would need, or, for PyTorch, that it was not used."""
    footprint = result.footprints.get(system)
    return f"would need {footprint.total / 2 ** 30:.1f} GiB" if footprint else MISSING


def _attention_memory(results):
    rows = [[r.workload.label, *(_mib(r.residual_bytes[s], unit=False) for s in ATTENTION_JAX),
             *(_mib(r.footprints[s].temp, unit=False) for s in ATTENTION_JAX)] for r in results.values()]
    header = ["workload", *(f"{s} residuals" for s in ATTENTION_JAX), *(f"{s} temp" for s in ATTENTION_JAX)]
    return _table(header, rows)


def _attention_compile(results):
    rows = [[r.workload.label, *(f"{r.compile_seconds[(FWD_BWD, s)]:.2f}" for s in ATTENTION_JAX)]
            for r in results.values()]
    return _table(["workload", *ATTENTION_JAX], rows)


def _heading(title, environment, tiny):
    if tiny:
        title += " (tiny sizes: a smoke run, not a measurement)"
    return [f"## {title}", "", *(f"- {name}: {value}" for name, value in environment.items())]


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _ms(stats: Stats | None) -> str:
    return MISSING if stats is None else f"{stats.median:.3g} ({stats.p10:.3g}–{stats.p90:.3g})"


def _ratio(stats: Stats) -> str:
    return f"{stats.median:.3g}× ({stats.p10:.3g}–{stats.p90:.3g})"


def _check(check: Check) -> str:
    return f"{'ok' if check.ok else 'FAILED'}: {check.difference:.1e}"


def _times(value, suffix="×") -> str:
    return MISSING if value is None else f"{value:.3g}{suffix}"


def _checks(result) -> str:
    if not result.checks:
        return MISSING
    return "; ".join(f"{'ok' if c.ok else 'FAILED'}: {c.what} {c.difference:.1e}" for c in result.checks)


def _of_kind(results, kind):
    return [r for r in results.values() if any(p == kind for p, _ in r.times)]


def _steps_table(results):
    rows = [[r.workload.label, _ms(r.times.get((STEP, PUREBP))), _ms(r.times.get((STEP, AUTODIFF))),
             *(_ms(r.times.get((STEP, system))) for system in TORCH),
             _times(r.ratio(STEP, AUTODIFF)), _times(r.ratio(STEP, PYTORCH_BEST)), _checks(r)]
            for r in _of_kind(results, STEP)]
    header = ["workload", "purebp (ms)", "autodiff (ms)", "PyTorch (ms)", "PyTorch channels-last (ms)",
              "purebp / autodiff", "purebp / PyTorch best", "check"]
    return _table(header, rows) if rows else []


def _matmul_peak(results):
    """The best GFLOP/s of the plain matmul over the systems that ran it: the machine's practical peak."""
    result = results.get("matmul")
    if result is None:
        return None
    return max(result.workload.flops / stats.median / 1e6 for stats in result.times.values())


def _throughput_table(results):
    mlp, matmul, peak = results.get("mlp"), results.get("matmul"), _matmul_peak(results)
    rows = []
    if matmul:
        for (_, system), stats in matmul.times.items():
            gflops = matmul.workload.flops / stats.median / 1e6
            rows.append([f"{matmul.workload.label}, {system}", _ms(stats), f"{gflops:.0f}",
                         _times(gflops / peak * 100, "%")])
    if mlp:
        for (_, system), stats in mlp.times.items():
            gflops = mlp.workload.flops / stats.median / 1e6
            share = gflops / peak * 100 if peak else None
            rows.append([f"MLP step, {system}", _ms(stats), f"{gflops:.0f}", _times(share, "%")])
    header = ["what", "time (ms)", "GFLOP/s", "% of matmul peak"]
    note = ["", "The MLP step's FLOPs are those of forward + backward, 2·B·(3 Σ in·out − in₀·out₀) "
                "(the first layer's input cotangent is never computed); the matmul peak is the better of JAX's and PyTorch's."]
    return _table(header, rows) + note if rows else []


def _ops_table(results):
    rows = []
    for r in _of_kind(results, FWD_BWD):
        for pass_ in (BACKWARD, FWD_BWD):
            rows.append([r.workload.label, pass_, _ms(r.times.get((pass_, PUREBP))),
                         _ms(r.times.get((pass_, AUTODIFF))), *(_ms(r.times.get((pass_, s))) for s in TORCH),
                         _times(r.ratio(pass_, AUTODIFF)), _times(r.ratio(pass_, PYTORCH_BEST)),
                         _checks(r) if pass_ == FWD_BWD else ""])
    header = ["op", "pass", "purebp (ms)", "autodiff (ms)", "PyTorch (ms)", "PyTorch channels-last (ms)",
              "purebp / autodiff", "purebp / PyTorch best", "check"]
    return _table(header, rows) if rows else []


def _residuals_table(results):
    rows = []
    for r in results.values():
        if r.residual_bytes:
            mine, theirs = r.residual_bytes[PUREBP], r.residual_bytes[AUTODIFF]
            rows.append([r.workload.label, f"{mine:,}", f"{theirs:,}", _times(mine / theirs if theirs else None),
                         "met" if mine <= theirs else "missed"])
    return _table(["workload", "purebp", "autodiff", "purebp / autodiff", "≤ autodiff"], rows) if rows else []


def _compile_table(results):
    rows = []
    for r in results.values():
        for pass_ in dict.fromkeys(p for p, _ in r.compile_seconds):
            mine, theirs = r.compile_seconds[(pass_, PUREBP)], r.compile_seconds[(pass_, AUTODIFF)]
            rows.append([r.workload.label, pass_, f"{mine:.2f}", f"{theirs:.2f}", _times(mine / theirs)])
    return _table(["workload", "pass", "purebp (s)", "autodiff (s)", "purebp / autodiff"], rows) if rows else []


def _targets_table(results):
    """The issue's targets, each with its measured figure; rows whose workloads did not run are left out."""
    rows = []

    def ratio_target(name, pass_, other, limit, what=None):
        if name in results:
            value = results[name].ratio(pass_, other)
            what = what or f"{results[name].workload.label}, {pass_}"
            rows.append([f"{what} ≤ {limit:g}× {other}", _times(value), _verdict(value, value is not None
                                                                                   and value <= limit)])

    ratio_target("mlp", STEP, AUTODIFF, 1.0, "MLP step")
    if "mlp" in results and "matmul" in results:
        mlp = results["mlp"]
        gflops = mlp.workload.flops / mlp.median(STEP, PUREBP) / 1e6
        share = gflops / _matmul_peak(results)
        rows.append(["MLP step ≥ 85% of the matmul peak", f"{share * 100:.0f}% ({gflops:.0f} GFLOP/s)",
                     _verdict(share, share >= 0.85)])
    ratio_target("cnn", STEP, AUTODIFF, 0.6, "CNN step")
    ratio_target("cnn", STEP, TORCH[1], 1.0, "CNN step")
    ratio_target("max_pool", BACKWARD, AUTODIFF, 0.05)
    ratio_target("max_pool_overlap", BACKWARD, AUTODIFF, 1.0)
    ratio_target("max_pool_stride1", BACKWARD, AUTODIFF, 1.0)
    for name in ("conv_first", "conv_second", "conv_wide", "conv_transpose"):
        ratio_target(name, FWD_BWD, AUTODIFF, 0.5)
        ratio_target(name, FWD_BWD, PYTORCH_BEST, 1.5)  # an aim rather than a requirement
    for name in FAMILIES["second"]:
        ratio_target(name, FWD_BWD, AUTODIFF, 1.1)
    for name, (what, limit_of) in _RESIDUAL_TARGETS.items():
        if name in results:
            mine, limit = results[name].residual_bytes[PUREBP], limit_of(results[name].workload.args[0])
            rows.append([f"{results[name].workload.label}, residual bytes ≤ {what} ({_mib(limit)})", _mib(mine),
                         _verdict(mine, mine <= limit)])
    measured = [r for r in results.values() if r.residual_bytes]
    rows += _residuals_against_autodiff("residual bytes ≤ autodiff, every op and model", measured, FAMILIES["first"],
                                        lambda mine, theirs: mine <= theirs)
    rows += _residuals_against_autodiff("residual bytes < autodiff, every op", measured, FAMILIES["second"],
                                        lambda mine, theirs: mine < theirs)
    return _table(["target", "measured", "met"], rows) if rows else []


# Issue 15's residual-bytes targets, as bounds in bytes of the op's input x, (rows, features): one
# array of x's size where the rule keeps z alone; for the norms, x "+ per-row stats", i.e. x and
# vectors (μ and 1/σ per row or channel, and γ: at most two float32 per row and two per feature);
# for dropout, a boolean mask, a byte an element (purebp keeps it as bits, an eighth of that).
_RESIDUAL_TARGETS = {
    "gelu": ("x", lambda x: x.nbytes),
    "gelu_erf": ("x", lambda x: x.nbytes),
    "silu": ("x", lambda x: x.nbytes),
    "layer_norm": ("x + per-row stats", lambda x: x.nbytes + 4 * 2 * sum(x.shape)),
    "batch_norm": ("x + per-channel stats", lambda x: x.nbytes + 4 * 2 * sum(x.shape)),
    "dropout": ("a bool mask", lambda x: x.size),
}


def _residuals_against_autodiff(target, measured, family, met):
    """The row of ``target``: how many of ``family``'s measured workloads keep residual bytes that ``met``."""
    measured = [r for r in measured if r.name in family]
    if not measured:
        return []
    over = [r.name for r in measured if not met(r.residual_bytes[PUREBP], r.residual_bytes[AUTODIFF])]
    return [[target, f"{len(measured) - len(over)} of {len(measured)}" + (f" (not: {', '.join(over)})" if over else ""),
             "met" if not over else "missed"]]


def _mib(size, unit=True):
    return f"{size / 2 ** 20:,.2f}" + (" MiB" if unit else "")


def _verdict(value, met):
    return MISSING if value is None else ("met" if met else "missed")
