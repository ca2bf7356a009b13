"""Cotangents typed like their primals: dtype, varying manual axes (``shard_map``) and sharding.

A ``custom_vjp`` rule must return each cotangent with its primal's type, and JAX's own autodiff
gives it that type through transposes the rule never sees. Two parts of the type need care:

- **vma** (``jax.shard_map`` with ``check_vma=True``): a value's type records the manual mesh axes
  it varies over; batch rows vary over ``"batch"``, replicated weights do not. An op that mixes
  the two casts the invariant operand to varying, and autodiff transposes that cast into a
  ``psum``: a replicated weight's gradient is the sum of every device's contribution. A rule's
  ``dw = x.T @ g`` varies with ``x``; ``like`` writes the ``psum`` out.
- **sharding** (Explicit mesh axes, ``jax.make_mesh``'s default, under ``jax.set_mesh``): each
  array's type names the mesh axes its dims are split over. A contraction over a sharded dim
  (``dw = x.T @ g`` over the batch) has no one obvious output sharding, so the rules give every
  contraction, reshape and convolution the ``out_sharding`` of the cotangent they compute
  (``sharding(primal)``), as JAX's transpose rules do; ``like`` reshards what is still typed
  otherwise (a bias cotangent summed over a sharded dim).

Outside a mesh, under Auto axes and with ``check_vma=False``, the extra types are empty: ``like``
then adds nothing but the dtype cast, and an empty ``out_sharding`` is no ``out_sharding``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def of(a) -> jax.core.ShapedArray | None:
    """``a``'s abstract type (shape, dtype, sharding, vma), None for None (an absent bias).

    Hashable, so a rule can take the type of an operand it does not keep (a bias) as static.
    """
    return None if a is None else jax.typeof(a)


def sharding(a) -> jax.sharding.NamedSharding:
    """``a``'s sharding type, for an ``out_sharding``; its mesh is empty outside ``jax.set_mesh``.

    An argument that was never placed (params straight from ``init``) is typed on no mesh even
    under ``jax.set_mesh``; it is whole on the context mesh, as JAX's own transpose rules take it.
    """
    typed = jax.typeof(a).sharding
    context = jax.sharding.get_abstract_mesh()
    if typed.mesh.empty and not context.empty:
        return jax.sharding.NamedSharding(context, jax.sharding.PartitionSpec(*(None,) * jnp.ndim(a)))
    return typed


def named(a, *spec) -> jax.sharding.NamedSharding:
    """A sharding on ``a``'s mesh with ``spec``: the ``out_sharding`` of an intermediate array whose
    dims the rule relates to ``a``'s. ``named(g, *spec(g)[:1])`` splits the leading (batch) dim as
    ``g``'s and keeps every other dim whole; ``named(w)`` keeps every dim whole (replicated)."""
    return jax.sharding.NamedSharding(sharding(a).mesh, jax.sharding.PartitionSpec(*spec))


def spec(a) -> jax.sharding.PartitionSpec:
    """``a``'s partition spec, one entry per dim (all None outside Explicit axes)."""
    return sharding(a).spec


def features_out(x, w, batch_dims: int) -> jax.sharding.NamedSharding:
    """The sharding of ``y = x · w`` contracted over ``x``'s last dim into ``w``'s last: ``x``'s first
    ``batch_dims`` dims split as ``x``'s, any further ones (a conv's spatial dims) whole, the output
    features as ``w``'s unless ``x`` already uses those mesh axes.

    A forward rule passes it as ``out_sharding``, so that a weight split over devices works under
    Explicit axes as it does under Auto: split over its input features (FSDP, Megatron's row
    parallel layer, whose contraction is summed over devices) or its output features (column
    parallel), where the contraction alone would refuse or ask for an ``out_sharding``.
    """
    leading = tuple(spec(x)[:batch_dims])
    return named(x, *leading, *(None,) * (x.ndim - 1 - batch_dims), features_beside(leading, w))


def features_beside(leading, w):
    """The spec entry of an output's features taken from ``w``'s last dim: split as ``w``'s unless
    ``leading`` (the output's other entries) already uses those mesh axes, whole then."""
    used = {axis for entry in leading if entry is not None for axis in _axes(entry)}
    features = spec(w)[-1]
    return None if used & set(_axes(features)) else features


def _axes(entry) -> tuple:
    """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def full_beside(a, shape, fill, dtype, *others):
    """An array of ``shape`` filled with ``fill``, typed as an intermediate of ``a``'s: its leading
    (batch) dim split as ``a``'s, the others whole, varying over the manual axes ``a`` (and any of
    ``others``) varies over. A loop's initial carry, which must have the type its body gives it back."""
    out = jnp.full(shape, fill, dtype, out_sharding=named(a, *spec(a)[:1]))
    if axes := _ordered(frozenset().union(*(vma(x) for x in (a, *others) if x is not None))):
        out = lax.pcast(out, axes, to="varying")
    return out


def vma(a) -> frozenset:
    """The manual mesh axes ``a`` varies over: empty outside ``shard_map``."""
    return jax.typeof(a).manual_axis_type.varying


def like(cotangent, primal: jax.core.ShapedArray):
    """``cotangent`` cast to ``primal``'s dtype, vma and sharding (``primal`` is ``of(the primal)``).

    Summed (``psum``) over the manual axes it varies on and its primal does not: the transpose of
    the implicit cast to varying; cast to varying on those its primal varies on and it does not;
    resharded where its sharding type still differs. A ``None`` cotangent, or a ``None`` primal
    (an absent bias), gives ``None``.
    """
    if cotangent is None or primal is None:
        return None
    cotangent = cotangent.astype(primal.dtype)
    if extra := _ordered(vma(cotangent) - primal.manual_axis_type.varying):
        cotangent = lax.psum(cotangent, extra)  # ∂/∂w of Σ_devices: the devices' cotangents summed
    if missing := _ordered(primal.manual_axis_type.varying - vma(cotangent)):
        cotangent = lax.pcast(cotangent, missing, to="varying")
    if not primal.sharding.mesh.empty and sharding(cotangent).spec != primal.sharding.spec:
        cotangent = jax.sharding.reshard(cotangent, primal.sharding.spec)
    return cotangent


def _ordered(axes: frozenset) -> tuple:
    """Axis names in a fixed order, so the traced program does not depend on set iteration."""
    return tuple(sorted(axes, key=repr))
