"""Interleaved wall-clock timing and compile timing.

Every system of a workload is timed in the same loop: each repeat calls every system once, so that
a slow spell of a shared machine (other processes, frequency changes) falls on all of them alike
and their ratios stay meaningful. The order cycles through every permutation of the systems, so
each follows each other equally often: PyTorch's OpenMP threads keep spinning for a while after a
call and slow down whatever runs next (with a plain rotation of three systems, purebp followed
PyTorch twice as often as autodiff did, and its MLP step measured 1.25x autodiff's instead of 1.00x).
"""
from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """The median and the 10th and 90th percentiles of the repeats: milliseconds per call, or a ratio."""

    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, values) -> Stats:
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        return cls(float(median), float(p10), float(p90))


def time_interleaved(calls: dict[str, Callable[[], object]], *, warmup: int, repeats: int) -> dict[str, Stats]:
    """Times each of ``calls`` (each runs once and waits for its result) ``repeats`` times, interleaved.

    Every call first runs ``warmup`` times untimed (caches, allocator pools, thread pools).
    """
    samples = interleaved_seconds(calls, warmup=warmup, repeats=repeats)
    return {name: Stats.of(np.asarray(seconds) * 1e3) for name, seconds in samples.items()}


def interleaved_seconds(calls: dict[str, Callable[[], object]], *, warmup: int,
                        repeats: int) -> dict[str, list[float]]:
    """``time_interleaved``'s raw samples: ``samples[name][i]`` is the seconds of ``name``'s call in repeat ``i``.

    Every repeat calls every system once, so the i-th samples of two systems were taken moments
    apart, and their ratio is one measurement of the systems' ratio.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    orders = list(itertools.permutations(names))
    samples = {name: [] for name in names}
    gc.collect()
    gc.disable()  # a collection inside one timed call would land on whichever system happened to run
    try:
        for repeat in range(repeats):
            for name in orders[repeat % len(orders)]:
                start = time.perf_counter()
                calls[name]()
                samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return samples


def compile_seconds(jitted, *args) -> float:
    """Seconds to trace, lower and compile ``jitted`` for ``args``.

    The executable lands in jit's cache, so the first timed call does not compile again.
    """
    start = time.perf_counter()
    jitted.lower(*args).compile()
    return time.perf_counter() - start
