"""Exporting trained params as one NumPy ``.npz`` file that keeps the pytree's structure.

Two ways to put training on disk, for two purposes:

- **To resume a run**, ``training.fit(..., checkpoint_dir=...)`` checkpoints with Orbax
  (``orbax.checkpoint.CheckpointManager``): params, optimizer state, the data order and the
  history, written asynchronously, sharded arrays from every host, restored onto a mesh. That is
  the JAX ecosystem's format (flax's, MaxText's); purebp writes no other for it.
- **To hand trained params on** (to another program, a notebook, a colleague without Orbax),
  ``save_params`` writes them to one portable file that NumPy alone reads, with no pickle
  (``allow_pickle=False``: loading cannot run code). The structure is stored beside the arrays
  as JSON, so ``load_params`` needs no template, and empty dicts (the params of layers without
  parameters) survive the round trip. It round-trips exactly what it describes, nested dicts,
  lists and tuples of arrays, and refuses anything else before writing a byte: an optimizer state
  (optax's are NamedTuples, whose classes a file without pickle cannot rebuild) belongs in an
  Orbax checkpoint.
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
      TypeError: if ``params`` holds a container, key or leaf this format does not describe (a
        NamedTuple such as any optax state, whose class a file without pickle cannot rebuild; an
        object array), before anything is written.
    """
    leaves = []
    structure = _describe(params, leaves)
    arrays = {f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}
    with open(path, "wb") as file:  # an open file: np.savez would append .npz to a bare name
        np.savez(file, **arrays, **{_STRUCTURE: np.asarray(json.dumps(structure))})


def load_params(path: str | os.PathLike):
    """Reads params written by ``save_params``, as ``jax.Array`` leaves in the saved structure and dtypes.

    Raises:
      ValueError: if ``path`` is not a file ``save_params`` wrote (a ``.npy``, an ``.npz`` without
        the structure, a structure with an unknown node, a leaf missing, unused or stored in another
        dtype or size than the structure says). Nothing is reinterpreted: a file either loads as it
        was saved or is refused.
    """
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile) or _STRUCTURE not in data.files:
        raise ValueError(f"{os.fspath(path)!r} is not a file written by save_params (an .npz with a "
                         f"{_STRUCTURE!r} entry), got {'an .npz without it' if isinstance(data, np.lib.npyio.NpzFile) else 'an .npy array'}.")
    with data:
        structure = json.loads(str(data[_STRUCTURE]))
        used = set()
        params = _rebuild(structure, lambda index, dtype: _leaf(data, index, dtype, used))
        if unused := sorted(set(data.files) - {_STRUCTURE} - {f"leaf_{i}" for i in used}):
            raise ValueError(f"{os.fspath(path)!r} holds arrays its structure does not place: {unused}.")
        return params


def _leaf(data, index, dtype, used):
    """Array ``leaf_{index}`` of ``data`` as ``dtype``, after checking that its bytes are that dtype's."""
    name = f"leaf_{index}"
    if not isinstance(index, int) or name not in data.files or index in used:
        raise ValueError(f"the structure names leaf {index!r}, which the file does not hold (or names twice).")
    used.add(index)
    stored, expected = data[name], _dtype(dtype, index)
    if stored.dtype.kind == "V":  # .npz keeps ml_dtypes (bfloat16, float8) as raw bytes of their size
        if not (expected.kind == "V" and expected.itemsize == stored.dtype.itemsize):
            raise ValueError(f"leaf {index} holds {stored.dtype.itemsize}-byte raw values, which are not {expected}.")
        return jnp.asarray(stored.view(expected))
    if stored.dtype != expected:
        raise ValueError(f"leaf {index} is stored as {stored.dtype}, but the structure says {expected}.")
    return jnp.asarray(stored)


def _dtype(name, index):
    try:
        return np.dtype(jnp.dtype(name))
    except TypeError:
        raise ValueError(f"leaf {index} has the unknown dtype {name!r}.") from None


def _describe(node, leaves):
    """JSON for ``node``'s structure, appending its arrays to ``leaves`` in order."""
    if isinstance(node, dict):
        if not all(isinstance(key, str) for key in node):
            raise TypeError(f"`params` dict keys must be strings, got {list(node)}.")
        return {"dict": {key: _describe(value, leaves) for key, value in node.items()}}
    if type(node) in (list, tuple):  # exactly: a NamedTuple's class could not be rebuilt from the file
        return {type(node).__name__: [_describe(value, leaves) for value in node]}
    if isinstance(node, tuple):
        raise TypeError(f"`params` may hold dicts, lists and tuples of arrays, got a {type(node).__name__} (a "
                        f"NamedTuple, such as an optax state), which a file without pickle cannot rebuild; to save "
                        f"a run with its optimizer state, checkpoint it with Orbax: training.fit(..., "
                        f"checkpoint_dir=...).")
    if node is None:
        return {"none": None}
    if not hasattr(node, "shape"):
        raise TypeError(f"`params` leaves must be arrays, got {type(node).__name__}.")
    array = np.asarray(node)
    if array.dtype.kind == "O":
        raise TypeError(f"`params` leaves must be numeric arrays, got an array of Python objects of shape {array.shape}.")
    leaves.append(array)
    # The dtype by name: .npz stores bfloat16 and other ml_dtypes as raw bytes (void).
    return {"leaf": [len(leaves) - 1, str(array.dtype)]}


def _rebuild(structure, leaf):
    if not (isinstance(structure, dict) and len(structure) == 1 and next(iter(structure)) in _KINDS):
        raise ValueError(f"the file's structure holds the unknown node {structure!r}; expected one of {_KINDS}.")
    (kind, content), = structure.items()
    if kind == "dict" and isinstance(content, dict):
        return {key: _rebuild(value, leaf) for key, value in content.items()}
    if kind in ("list", "tuple") and isinstance(content, list):
        values = [_rebuild(value, leaf) for value in content]
        return values if kind == "list" else tuple(values)
    if kind == "none" and content is None:
        return None
    if kind == "leaf" and isinstance(content, list) and len(content) == 2:
        return leaf(*content)
    raise ValueError(f"the file's structure holds a malformed {kind!r} node: {structure!r}.")


_KINDS = ("dict", "list", "tuple", "none", "leaf")
