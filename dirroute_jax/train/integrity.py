"""Integrity of checkpointed states: per-leaf checksums, the finite-state rule, the step
leaf and the shape-fit check. What makes a checkpoint on disk trustworthy, apart from how
Orbax writes and reads it (train/checkpoint.py).

Orbax catches a truncated or missing file, but not bytes changed in place (a bad disk, a bit
flip, a stray write): those load as garbage weights. So every save records two wrapping uint32
sums of each leaf's bit pattern (a plain one and a position-weighted one, computed on device in
one jitted pass), and every restore recomputes them on the restored arrays and compares. A
state with a NaN or Inf anywhere is refused at save time (NonFiniteStateError), so a
checkpoint on disk is always one that can be trained on.

The exceptions here are what a checkpoint can be wrong with; train/checkpoint.py raises them
too, and launchers map them to exit statuses (cli.py).
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath

PyTree = Any

CHECKSUM = 'checksum'  # the step item holding the checksums (train/checkpoint.py)


class CheckpointError(RuntimeError):
  """A checkpoint directory cannot be written, or holds no usable checkpoint."""


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the expected state (another config wrote it)."""


class CheckpointCorruptError(CheckpointError):
  """A checkpoint's arrays do not match the checksums written when it was saved."""


class NonFiniteStateError(FloatingPointError):
  """The state to save holds NaN or Inf; it was not saved."""


_U32 = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_digest(x: jax.Array) -> dict[str, jax.Array]:
  """Two uint32 sums of a leaf's bit pattern (wrapping, so the order the
  shards are reduced in does not matter) and its count of NaN/Inf.

  The plain sum changes with any single flipped bit; weighting each word by
  its linear index + 1 also catches words swapped or moved. The index is built
  from per-axis iotas rather than a reshape, so a sharded leaf is reduced where
  it lives, without gathering it.
  """
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    words = x.astype(jnp.uint32)
  else:
    words = jax.lax.bitcast_convert_type(x, _U32[x.dtype.itemsize])
    words = words.astype(jnp.uint32)
  index = jnp.ones(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    index += jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
      stride & 0xFFFFFFFF
    )
    stride *= words.shape[axis]
  nonfinite = (
    jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)
    if jnp.issubdtype(x.dtype, jnp.inexact)
    else jnp.int32(0)
  )
  return {
    'sums': jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * index, dtype=jnp.uint32)]),
    'nonfinite': nonfinite,
  }


_digest = jax.jit(lambda tree: jax.tree.map(_leaf_digest, tree))


def state_digest(state: PyTree) -> dict[str, dict[str, Any]]:
  """{leaf path: {'sums': [s1, s2], 'nonfinite': n}} of `state`, computed on
  device (one small transfer per leaf). Paths are as orbax names them."""
  digest = jax.device_get(_digest(state))
  return {
    _path_str(p): {'sums': [int(v) for v in d['sums']], 'nonfinite': int(d['nonfinite'])}
    for p, d in jax.tree_util.tree_flatten_with_path(
      digest, is_leaf=lambda d: isinstance(d, dict) and 'sums' in d
    )[0]
  }


def check_finite(digest: dict[str, dict[str, Any]], step: int):
  """Raises NonFiniteStateError if any leaf of `digest` (state_digest) holds NaN or Inf."""
  bad = {p: d['nonfinite'] for p, d in digest.items() if d['nonfinite']}
  if bad:
    first = next(iter(bad))
    raise NonFiniteStateError(
      f'the state at step {step} has NaN/Inf in {len(bad)} of {len(digest)} '
      f'leaves (first: {first!r}, {bad[first]} values); it was not saved'
    )


def verify(
  restored: PyTree,
  saved_sums: dict[str, Any] | None,
  step_dir: epath.Path,
  checksum_saved: bool = True,
):
  """Raises CheckpointCorruptError unless `restored` matches `saved_sums`.

  `checksum_saved`: whether the step's metadata says it was written with a
  checksum item (or cannot say). Only a step saved without one (an older
  version) is restored unverified: deleting the item must not turn the check
  off.
  """
  if saved_sums is None:
    if checksum_saved:
      raise CheckpointCorruptError(
        f'{step_dir / CHECKSUM} is missing, though the step was saved with '
        'it: its arrays cannot be verified'
      )
    logging.warning(
      '%s has no checksums (saved by an older version); its arrays are not verified.', step_dir
    )
    return
  digest = state_digest(restored)
  bad = [p for p, d in digest.items() if p in saved_sums and list(saved_sums[p]) != d['sums']]
  unknown = [p for p in digest if p not in saved_sums]
  if bad or unknown:
    what = (
      f'{len(bad)} of {len(digest)} leaves differ from the checksums '
      f'written at save time (first: {bad[0]!r})'
      if bad
      else f'leaf {unknown[0]!r} has no saved checksum'
    )
    raise CheckpointCorruptError(
      f'{step_dir} is damaged: {what}; its files were changed after the save'
    )


def check_step(restored: PyTree, step: int, step_dir: epath.Path, step_leaf: str | None):
  """The saved step leaf, not the directory's name, says which step this is:
  a step directory copied or renamed would otherwise skip or repeat steps."""
  if step_leaf is None or not isinstance(restored, Mapping) or (step_leaf not in restored):
    return
  saved = int(jax.device_get(restored[step_leaf]))
  if saved != int(step):
    raise CheckpointCorruptError(
      f'{step_dir} holds the state of step {saved}, not {step} (a copied or renamed step directory)'
    )


def _path_str(path) -> str:
  """'models/routed/opt_state/0/mu/w' for a jax key path (as orbax names it)."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def check_fits(saved_tree: PyTree, abstract: PyTree, step_dir: epath.Path, partial: bool):
  """Raises CheckpointMismatchError naming the first leaf that differs.

  Orbax's own errors for this are deep tensorstore messages; a changed
  config (say d_model) deserves a message that says what to do.
  """
  saved = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  expected = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  hint = (
    f'The checkpoint in {step_dir.parent} was written by a different '
    'config; use a fresh --workdir or the original config.'
  )
  missing = [p for p in expected if p not in saved]
  if missing:
    want = expected[missing[0]]
    raise CheckpointMismatchError(
      f'{step_dir} has no leaf {missing[0]!r} (expected shape '
      f'{tuple(want.shape)} {want.dtype}; {len(missing)} missing in all). '
      f'{hint}'
    )

  def saved_sig(path):
    leaf = saved[path]
    return tuple(getattr(leaf, 'shape', ())), getattr(leaf, 'dtype', None)

  def differs(path):
    shape, dtype = saved_sig(path)
    want = expected[path]
    return shape != tuple(want.shape) or (dtype is not None and dtype != want.dtype)

  bad = [p for p in expected if differs(p)]
  if bad:
    (shape, dtype), want = saved_sig(bad[0]), expected[bad[0]]
    raise CheckpointMismatchError(
      f'{step_dir}: leaf {bad[0]!r} has saved shape {shape} {dtype} but '
      f'expected shape {tuple(want.shape)} {want.dtype} ({len(bad)} leaves '
      f'differ). {hint}'
    )
  if not partial:
    extra = [p for p in saved if p not in expected]
    if extra:
      raise CheckpointMismatchError(
        f'{step_dir} has leaves the expected state lacks, first: '
        f'{extra[0]!r} ({len(extra)} in all). {hint}'
      )
