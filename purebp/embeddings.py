r"""Embedding: the rows of a table picked by integer ids.

A ``jax.custom_vjp`` whose backward rule keeps the ids alone (not the table, not the rows it
returned), each as the row it picked in the narrowest unsigned type that holds the table's rows
(uint16 for a vocabulary of up to 65,535: half of autodiff's int32 indices): the cotangent of the
table is the incoming one scatter-added at those rows.
Derivation: ``docs/derivations/embedding.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from purebp import _static, _types


def embedding(ids, table):
    r"""Looks up ``table[ids]``: one row of ``table`` for each integer of ``ids``, as ``jnp.take(table, ids, axis=0)``.

    Backward: tablē = Σ over the positions p of ids of ȳ[p] added into row ids[p] (a scatter-add;
    rows no id picked get 0, out-of-range ids add nothing), from the saved ids alone, narrowed to
    the smallest unsigned type that holds V.

    Args:
      ids: integer array of any shape; ids in [−V, V) pick a row (negative ones from the end, as
        NumPy's), others give a row of NaN, as ``jnp.take`` and ``flax.linen.Embed``.
      table: floating array ``(V, D)``.

    Returns:
      ``ids.shape + (D,)``, in ``table``'s dtype.

    Raises:
      TypeError: if ``ids`` is not an integer array or ``table`` is not floating.
      ValueError: if ``table`` is not two-dimensional.

    >>> embedding(jnp.array([2, 0]), jnp.arange(6.0).reshape(3, 2)).tolist()
    [[4.0, 5.0], [0.0, 1.0]]

    Derivation: docs/derivations/embedding.md.
    """
    _static.check_integer(ids, "ids")
    _static.check_floating(table, "table")
    _static.check_ndim(table, "table", "a table (V, D) of V rows of D features", (2,))
    return _embedding(_types.of(table), ids, table)


# The table's type travels as a static argument, so that the rule can build its cotangent without
# keeping the table.
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _embedding(table_type, ids, table):
    return _rows(ids, table)


def _embedding_fwd(table_type, ids, table):
    return _rows(ids, table), _rows_picked(ids, table_type.shape[0])


def _rows(ids, table):
    """``jnp.take(table, ids, axis=0)`` (NaN rows for out-of-range ids), typed so that under Explicit
    axes the rows are split as the ids are (the batch), their features as the table's."""
    leading = tuple(_types.spec(ids))
    out = _types.named(ids, *leading, _types.features_beside(leading, table))
    return table.at[ids].get(mode="fill", fill_value=jnp.nan, out_sharding=out)


def _rows_picked(ids, rows):
    """The row each id picks, in [0, rows), or ``rows`` (no row: out of range, a NaN row), in the
    narrowest unsigned dtype that holds ``rows``: negative ids count from the end, as the forward's."""
    ids = jnp.where(ids < 0, ids + rows, ids)
    ids = jnp.where((ids >= 0) & (ids < rows), ids, rows)
    return ids.astype(jnp.uint8 if rows < 2 ** 8 else jnp.uint16 if rows < 2 ** 16 else jnp.uint32)


def _embedding_bwd(table_type, rows, g):  # (rows picked, ct y) -> (ct ids, ct table)
    # an index of `rows`, past the table's end, adds nothing (mode="drop")
    dtable = jnp.zeros(table_type.shape, g.dtype).at[rows.astype(jnp.int32)].add(
        g, mode="drop", out_sharding=_types.named(g, *(None,) * len(table_type.shape)))
    return None, _types.like(dtable, table_type)


_embedding.defvjp(_embedding_fwd, _embedding_bwd)
_embedding = jax.jit(_embedding, static_argnums=0)  # one program per call (purebp/__init__.py)
