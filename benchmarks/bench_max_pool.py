"""max_pool's hand-written backward against JAX's autodiff (select_and_scatter_add).

Run by hand from the repository root: ``python -m benchmarks.bench_max_pool`` (or
``python benchmarks/bench_max_pool.py``). Both backward passes are timed in one process,
interleaved, after warm-up; the table reports medians and goes to stdout and to
``docs/benchmarks-pooling.md``.

Two timings per case, both jitted:
- backward: the VJP function alone, applied to a cotangent (its residuals computed beforehand):
  purebp's argmax routing vs ``select_and_scatter_add`` on the saved input.
- forward + backward: ``jax.vjp`` and the cotangent in one jitted function, what a training step pays.
"""
from __future__ import annotations

import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import purebp  # noqa: E402
from purebp import reference, testing  # noqa: E402

SHAPE = (128, 28, 28, 32)
CASES = [  # (label, window, stride, padding)
    ("2x2 stride 2 VALID", 2, 2, "VALID"),
    ("3x3 stride 2 SAME (overlapping)", 3, 2, "SAME"),
    ("3x3 stride 1 SAME (overlapping)", 3, 1, "SAME"),
]
WARMUP, REPEATS = 5, 50
OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks-pooling.md"


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) * 1e3


def _interleaved_medians(calls) -> list[float]:
    """Median milliseconds of each ``(fn, args)``, after warm-up, the calls alternating every repeat."""
    for fn, args in calls:
        for _ in range(WARMUP):
            jax.block_until_ready(fn(*args))
    times = [[] for _ in calls]
    for _ in range(REPEATS):
        for i, (fn, args) in enumerate(calls):
            times[i].append(_timed(fn, *args))
    return [float(np.median(t)) for t in times]


def bench_case(window, stride, padding, x):
    ours = lambda x: purebp.max_pool(x, window, stride, padding)
    autodiff = lambda x: reference.max_pool(x, window, stride, padding)
    jaxpr = str(jax.make_jaxpr(lambda x, g: jax.vjp(autodiff, x)[1](g))(x, autodiff(x)))
    assert "select_and_scatter_add" in jaxpr, "the reference no longer differentiates through select_and_scatter_add"
    g = jnp.asarray(np.random.default_rng(1).standard_normal(ours(x).shape), x.dtype)

    apply_vjp = jax.jit(lambda vjp_fn, g: vjp_fn(g)[0])  # the backward alone, residuals as inputs
    vjp_ours, vjp_autodiff = jax.vjp(ours, x)[1], jax.vjp(autodiff, x)[1]
    forward_backward = lambda f: jax.jit(lambda x, g: jax.vjp(f, x)[1](g)[0])
    both_ours, both_autodiff = forward_backward(ours), forward_backward(autodiff)

    np.testing.assert_allclose(apply_vjp(vjp_ours, g), apply_vjp(vjp_autodiff, g), rtol=1e-5, atol=1e-5)
    bwd_ours, bwd_autodiff, fb_ours, fb_autodiff = _interleaved_medians(
        [(apply_vjp, (vjp_ours, g)), (apply_vjp, (vjp_autodiff, g)),
         (both_ours, (x, g)), (both_autodiff, (x, g))])
    return dict(bwd_ours=bwd_ours, bwd_autodiff=bwd_autodiff, fb_ours=fb_ours, fb_autodiff=fb_autodiff,
                res_ours=testing.residual_bytes(ours, x), res_autodiff=testing.residual_bytes(autodiff, x))


def main():
    x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
    device = jax.devices()[0]
    lines = [
        "# max_pool backward: purebp vs JAX autodiff",
        "",
        f"Input `{SHAPE}` float32 (N, H, W, C). purebp: `purebp.max_pool` (argmax residual, routing "
        "without a scatter); autodiff: `jax.vjp` of `purebp.reference.max_pool` (`lax.reduce_window` max, "
        "differentiated into `select_and_scatter_add`). Jitted, interleaved, "
        f"{WARMUP} warm-up calls then the median of {REPEATS}.",
        "",
        "| case | backward purebp (ms) | backward autodiff (ms) | autodiff / purebp | "
        "fwd+bwd purebp (ms) | fwd+bwd autodiff (ms) | autodiff / purebp | residual bytes purebp | "
        "residual bytes autodiff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, window, stride, padding in CASES:
        r = bench_case(window, stride, padding, x)
        lines.append(
            f"| {label} | {r['bwd_ours']:.2f} | {r['bwd_autodiff']:.2f} | {r['bwd_autodiff'] / r['bwd_ours']:.1f}x "
            f"| {r['fb_ours']:.2f} | {r['fb_autodiff']:.2f} | {r['fb_autodiff'] / r['fb_ours']:.1f}x "
            f"| {r['res_ours']:,} | {r['res_autodiff']:,} |")
    lines += [
        "",
        f"Machine: {platform.machine()} {platform.system()}, `nproc` = {os.cpu_count()}, "
        f"device `{device.platform}` ({device.device_kind}), jax {jax.__version__}, "
        f"Python {platform.python_version()}.",
        "",
        "Command: `python -m benchmarks.bench_max_pool` (from the repository root).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    OUTPUT.write_text(text)
    print(f"written to {OUTPUT}")


if __name__ == "__main__":
    main()
