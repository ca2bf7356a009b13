"""Saving and loading parameter pytrees as NumPy ``.npz`` files that keep the pytree's structure.

Why ``.npz`` rather than orbax-checkpoint: purebp's params are small pytrees of lists and dicts
of arrays; an ``.npz`` holds them in one portable file that NumPy (and so any tool) reads,
with no extra dependency and no pickle (``allow_pickle=False``: loading cannot run code). The
structure is stored beside the arrays as JSON, so loading needs no template, and empty dicts
(the params of layers without parameters) survive the round trip. For sharded, asynchronous or
multi-host checkpoints of large models, use orbax.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

_STRUCTURE = "__structure__"


def save_params(path: str | os.PathLike, params) -> None:
    """Writes ``params`` (nested lists, tuples and dicts with string keys, of arrays) to ``path``.

    Raises:
      TypeError: if ``params`` holds a container or key this format does not describe.
    """
    leaves = []
    structure = _describe(params, leaves)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    with open(path, "wb") as file:  # an open file: np.savez would append .npz to a bare name
        np.savez(file, **arrays, **{_STRUCTURE: np.asarray(json.dumps(structure))})


def load_params(path: str | os.PathLike):
    """Reads params written by ``save_params``, as ``jax.Array`` leaves in the saved structure and dtypes."""
    with np.load(path, allow_pickle=False) as data:
        structure = json.loads(str(data[_STRUCTURE]))
        return _rebuild(structure, lambda i, dtype: jnp.asarray(data[f"leaf_{i}"].view(jnp.dtype(dtype))))


def _describe(node, leaves):
    """JSON for ``node``'s structure, appending its arrays to ``leaves`` in order."""
    if isinstance(node, dict):
        if not all(isinstance(key, str) for key in node):
            raise TypeError(f"`params` dict keys must be strings, got {list(node)}.")
        return {"dict": {key: _describe(value, leaves) for key, value in node.items()}}
    if isinstance(node, (list, tuple)):
        return {type(node).__name__: [_describe(value, leaves) for value in node]}
    if node is None:
        return {"none": None}
    if not hasattr(node, "shape"):
        raise TypeError(f"`params` leaves must be arrays, got {type(node).__name__}.")
    leaves.append(node)
    # The dtype by name: .npz stores bfloat16 and other ml_dtypes as raw bytes (void).
    return {"leaf": [len(leaves) - 1, str(np.asarray(node).dtype)]}


def _rebuild(structure, leaf):
    (kind, content), = structure.items()
    if kind == "dict":
        return {key: _rebuild(value, leaf) for key, value in content.items()}
    if kind in ("list", "tuple"):
        values = [_rebuild(value, leaf) for value in content]
        return values if kind == "list" else tuple(values)
    return None if kind == "none" else leaf(*content)
