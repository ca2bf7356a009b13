"""Cotangents typed like their primals under ``jax.shard_map``'s varying-manual-axes check.

Inside ``shard_map`` with the default ``check_vma=True``, a value's type records the manual mesh
axes it varies over, its vma: the batch rows vary over ``"batch"``, replicated weights do not.
An op that mixes the two implicitly casts the invariant operand to varying, and JAX's own autodiff
transposes that cast into a ``psum``: a replicated weight's gradient is the sum of every device's
contribution, invariant again. A ``custom_vjp`` rule sees no such cast. Its ``dw = x.T @ g``
varies with ``x``, and JAX rejects a cotangent whose type differs from its primal's ("Custom VJP
bwd rule must produce an output with the same type ... the manual axis types do not match").
``match`` writes the transpose out: every backward rule whose operands may differ in vma passes
each cotangent through it. Outside ``shard_map``, and with ``check_vma=False``, every vma is empty
and ``match`` returns the cotangent itself, adding nothing to the jaxpr.
"""
from __future__ import annotations

import jax
from jax import lax


def of(a) -> frozenset:
    """The manual mesh axes ``a`` varies over: empty outside ``shard_map``. Hashable, so static."""
    return jax.typeof(a).manual_axis_type.varying


def match(cotangent, primal_vma: frozenset):
    """``cotangent`` summed over the axes it varies on and its primal does not (the transpose of the
    implicit cast to varying), cast to varying on those its primal varies on and it does not.

    ``primal_vma`` is ``of(primal)``; a ``None`` cotangent (no gradient) stays ``None``.
    """
    if cotangent is None:
        return None
    vma = of(cotangent)
    if extra := _ordered(vma - primal_vma):
        cotangent = lax.psum(cotangent, extra)  # ∂/∂w of Σ_devices: the devices' cotangents summed
    if missing := _ordered(primal_vma - vma):
        cotangent = lax.pcast(cotangent, missing, to="varying")
    return cotangent


def _ordered(axes: frozenset) -> tuple:
    """Axis names in a fixed order, so the traced program does not depend on set iteration."""
    return tuple(sorted(axes, key=repr))
