"""Checkpoints of the training state, the data-iterator position and the config.

One step directory per save, written by orbax's `CheckpointManager`:

  WORKDIR/checkpoints/<step>/state/   every model's params + opt_state, the step
  WORKDIR/checkpoints/<step>/data/    grain iterator position (if one is given)
  WORKDIR/checkpoints/<step>/config/  the run's config as JSON (if one is given)
  WORKDIR/checkpoints/<step>/checksum/ per-leaf checksums of the state (JSON)

Saving all of them in the same step is what makes a resume exact: the data
position can never drift from the weights it was trained into.

Integrity (checksums, the finite-state rule, the step leaf, the shape-fit check)
is train/integrity.py: every save records per-leaf checksums and refuses a state
with NaN or Inf; every restore verifies them, so bytes changed in place are caught.

Crash safety comes from orbax: a save is written to
`<step>.orbax-checkpoint-tmp` and renamed to `<step>` only once every item is
committed (a `commit_success.txt` marker on GCS). Old steps are deleted only
after the new one is finalized, and `latest_step()` only sees finalized steps,
so a crash mid-save leaves the previous good checkpoint untouched.

Restores always use the caller's target shardings, never the saved ones, so a
checkpoint written on a pod loads onto one CPU or any other mesh.
"""

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.train import integrity
from dirroute_jax.train.integrity import (
  CHECKSUM,
  CheckpointCorruptError,
  CheckpointError,
  CheckpointMismatchError,
)

PyTree = Any

STATE = 'state'
DATA = 'data'
CONFIG = 'config'

_policies = ocp.checkpoint_managers


@dataclasses.dataclass
class SavePolicy:
  """When training saves a checkpoint: at every multiple of `every_steps` and
  once `every_secs` seconds have passed since the last save (0: never), besides
  the saves the loop forces (a stop, the last step). Time is this process's:
  several processes agree on it before acting (train/schedule.py)."""

  every_steps: int = 0
  every_secs: float = 0.0
  last_save: float = dataclasses.field(default_factory=time.time)

  def step_due(self, step: int) -> bool:
    return bool(self.every_steps) and step % self.every_steps == 0

  def time_due(self) -> bool:
    return bool(self.every_secs) and time.time() - self.last_save >= self.every_secs

  def restart_clock(self):
    """The time rule counts from now (training starts, or a save returned)."""
    self.last_save = time.time()


class CheckpointReader:
  """Reads a run's checkpoints under `workdir/checkpoints/` and writes nothing.

  No write probe, no cleanup of a crashed save's leftovers, nothing moved aside:
  a damaged step is skipped with a warning and left where it is. Safe beside a
  running trainer (its retention may delete a step while it is read). Analysis,
  sampling and export open workdirs through this (dirroute_jax/reader.py);
  training's `Checkpointer` below is the writer.
  """

  read_only = True

  def __init__(self, workdir: epath.PathLike, *, step_leaf: str | None = None):
    """`step_leaf`: the top-level leaf of the state that holds its step number
    (the training state's 'step'); a restored step whose leaf disagrees with
    its directory's name is damaged. None: not checked."""
    self._locate(workdir, step_leaf)
    self._mngr = _manager(self.directory, read_only=True)

  def _locate(self, workdir: epath.PathLike, step_leaf: str | None):
    # Orbax's tensorstore paths must be absolute; "workdirs/tiny" from a shell is common.
    self.workdir = workdir_lib.path(workdir)
    if not workdir_lib.is_remote(workdir):
      self.workdir = self.workdir.absolute()
    self.directory = workdir_lib.checkpoints(self.workdir)
    self.step_leaf = step_leaf

  def close(self):
    """Releases orbax's threads."""
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # --- listing ----------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Finalized steps on disk, ascending (in-flight saves are not listed)."""
    return sorted(ocp.utils.checkpoint_steps(self.directory))

  def latest_step(self) -> int | None:
    """The newest complete step, or None if there is none yet."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  # --- restoring (read only) ---------------------------------------------------

  def restore_subtree(
    self, abstract_subtree: PyTree, *, step: int | None = None
  ) -> tuple[PyTree, int]:
    """Restores only the leaves present in `abstract_subtree` (e.g. params).

    Analysis tools need params only; this skips reading optimizer moments.
    `abstract_subtree` mirrors the saved state's nesting with parts left
    out, e.g. `{'models': {'routed': {'params': ...}}}`.
    """
    abstract_subtree = _with_target_shardings(abstract_subtree)

    def restore_step(step):
      saved_tree = self._saved_tree(step)
      integrity.check_fits(saved_tree, abstract_subtree, self._step_dir(step), partial=True)
      wanted = abstract_subtree
      # The saved step number comes along, to be checked against the
      # directory's name (a few bytes).
      key = self.step_leaf
      add_step = (
        key is not None
        and isinstance(saved_tree, Mapping)
        and key in saved_tree
        and isinstance(wanted, Mapping)
        and key not in wanted
      )
      if add_step:
        leaf = saved_tree[key]
        wanted = {
          **wanted,
          key: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=_default_sharding()),
        }
      args = ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True,
      )
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(self._step_dir(step) / STATE, args=args)
      saved_items = self._saved_items(step)
      sums = (
        self._restore_items(step, {})[CHECKSUM]
        if (self._step_dir(step) / CHECKSUM).exists()
        else None
      )
      integrity.verify(
        restored,
        sums,
        self._step_dir(step),
        checksum_saved=saved_items is None or CHECKSUM in saved_items,
      )
      integrity.check_step(restored, step, self._step_dir(step), self.step_leaf)
      if add_step:
        restored = {k: v for k, v in restored.items() if k != key}
      return restored

    return self._restore_with_fallback(restore_step, step)

  def restore_config(self, *, step: int | None = None) -> dict[str, Any]:
    """The config JSON saved with `step` (default: the newest readable one).

    Without `step`, a step whose config item is unreadable is skipped with a
    warning: every step of a run holds the same config.
    """
    steps = self.all_steps()
    tried = set()
    for _ in range(_MAX_ROUNDS):
      # Newest first, listed again after a step vanished under a reader (a
      # trainer's retention deletes old steps while this one reads).
      s = (
        int(step)
        if step is not None
        else next((s for s in reversed(self.all_steps()) if s not in tried), None)
      )
      if s is None or s in tried:
        break
      tried.add(s)
      if not (self._step_dir(s) / CONFIG).exists():
        continue
      args = ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
      try:
        config = self._mngr.restore(s, args=args)[CONFIG]
        if not isinstance(config, dict):
          raise ValueError(f'not a JSON object: {type(config).__name__}')
        return config
      except Exception as e:  # pylint: disable=broad-exception-caught
        if not self._step_dir(s).exists():
          continue
        if step is not None:
          raise CheckpointError(
            f'the config saved in {self._step_dir(s) / CONFIG} is '
            f'unreadable ({type(e).__name__}: {_short(e)})'
          ) from e
        logging.warning(
          'The config saved in %s is unreadable (%s: %s); using an older step\'s.',
          self._step_dir(s) / CONFIG,
          type(e).__name__,
          _short(e),
        )
    steps = self.all_steps() or steps
    where = f'step {step}' if step is not None else 'any step'
    raise FileNotFoundError(
      f'no saved config for {where} in {self.directory} (none readable); steps: {steps}'
    )

  # --- internals --------------------------------------------------------------

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _saved_items(self, step: int) -> set[str] | None:
    """The items the step's own metadata (orbax's `_CHECKPOINT_METADATA`,
    written with the step) says it was saved with; None if that file is
    missing or unreadable (a partial copy: then every item is expected)."""
    try:
      meta = json.loads((self._step_dir(step) / _STEP_METADATA).read_text())
      return set(meta['item_handlers'])
    except Exception:  # pylint: disable=broad-exception-caught
      return None

  def _restore_items(self, step: int, args: dict[str, Any]) -> dict[str, Any]:
    """Restores `args` plus the checksums (if the step has them) of `step`."""
    args = dict(args)
    if (self._step_dir(step) / CHECKSUM).exists():
      args[CHECKSUM] = ocp.args.JsonRestore()
    restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    return {k: restored[k] for k in args}

  def _saved_tree(self, step: int) -> PyTree:
    metadata = self._mngr.item_metadata(step)[STATE]
    if metadata is None:
      raise CheckpointError(f'{self._step_dir(step)} has no {STATE!r} item')
    return metadata.tree

  def _restore_with_fallback(self, restore_step, step):
    """Runs `restore_step` on `step`, or on the newest step that works."""
    if not self.read_only:
      self.wait()  # Never read a step that is still being written.
    steps = self.all_steps()
    if step is not None:
      if int(step) not in steps:
        raise FileNotFoundError(
          f'no complete checkpoint for step {step} in {self.directory}; available steps: {steps}'
        )
      try:
        return restore_step(int(step)), int(step)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-exception-caught
        raise CheckpointError(
          f'checkpoint {self._step_dir(step)} is unreadable: {type(e).__name__}: {e}'
        ) from e
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    failures, tried = [], set()
    # Newest first. The list is read again after each step: a trainer beside a
    # reader saves new steps and deletes old ones (retention) meanwhile, and a
    # step that vanished while being read is not damaged, just gone.
    for _ in range(_MAX_ROUNDS):
      s = next((s for s in reversed(self.all_steps()) if s not in tried), None)
      if s is None:
        break
      tried.add(s)
      try:
        restored = restore_step(s)
      except CheckpointMismatchError:
        if not self._step_dir(s).exists():
          continue
        raise  # Older steps come from the same run; falling back won't help.
      except Exception as e:  # pylint: disable=broad-exception-caught
        # A reader that finds a newer step than the one that failed has a
        # trainer beside it: the failed step is being deleted by its retention
        # (orbax removes a step's items one by one), not damaged.
        removed = not self._step_dir(s).exists() or (
          self.read_only and any(n > s for n in self.all_steps())
        )
        if removed:
          logging.info(
            'Checkpoint %s was removed while being read (a running '
            'trainer\'s retention); trying the newest one left.',
            self._step_dir(s),
          )
          continue
        what = (
          f'it is moved to {workdir_lib.path(self.workdir, workdir_lib.CORRUPT_CHECKPOINTS)}'
          if not self.read_only
          else 'it is left where it is (a reader moves nothing)'
        )
        logging.warning(
          'Checkpoint %s is corrupt or partial (%s: %s); falling back to the previous one.',
          self._step_dir(s),
          type(e).__name__,
          _short(e),
        )
        print(
          f'WARNING: checkpoint {self._step_dir(s)} is corrupt or partial '
          f'({type(e).__name__}: {_short(e, 200)}); {what} and '
          'the previous one is used.',
          flush=True,
        )
        failures.append((s, e))
        continue
      self._quarantine([f for f, _ in failures if f > s])
      return restored, s
    if not failures:
      raise FileNotFoundError(
        f'no checkpoint in {self.directory} (steps {sorted(tried)} were '
        'removed while being read; is a trainer with checkpoint.keep=1 '
        'saving there? Try again)'
      )
    details = '; '.join(f'step {s}: {type(e).__name__}: {_short(e)}' for s, e in failures)
    raise CheckpointError(
      f'no usable checkpoint in {self.directory} (tried steps '
      f'{[s for s, _ in failures]}): {details}'
    ) from failures[0][1]

  def _quarantine(self, steps: list[int]):
    """A reader moves nothing: skipped steps stay where they are."""
    del steps


class Checkpointer(CheckpointReader):
  """Saves and restores a training run under `workdir/checkpoints/`: the writer.

  Keeps the `keep` newest steps plus, permanently, every step that is a
  multiple of `permanent_every` (if > 0), so long runs keep a sparse history
  for later analysis without filling the disk. `policy` says at which steps
  training saves (SavePolicy); the checkpointer owns it, the loop asks it.
  """

  read_only = False

  def __init__(
    self,
    workdir: epath.PathLike,
    *,
    keep: int = 3,
    permanent_every: int = 0,
    async_save: bool = True,
    step_leaf: str | None = None,
    policy: SavePolicy | None = None,
  ):
    """`step_leaf`: see CheckpointReader. `policy`: when training saves
    (default: only when the loop forces a save)."""
    if keep < 1:
      raise ValueError(
        f'keep must be >= 1 (got {keep}): keep=0 would delete the checkpoint just written.'
      )
    self._locate(workdir, step_leaf)
    _check_writable(self.directory)
    self.policy = policy or SavePolicy()
    self._mngr = _manager(
      self.directory,
      read_only=False,
      keep=keep,
      permanent_every=permanent_every,
      async_save=async_save,
    )

  # --- saving -----------------------------------------------------------------

  def save(
    self,
    step: int,
    state: PyTree,
    *,
    data_iter: Any = None,
    config: Any = None,
    force: bool = False,
  ) -> bool:
    """Starts saving `state` (and the iterator position and config) at `step`.

    Returns as soon as device arrays are copied to host (if async); the write
    finishes in the background. The data-iterator state is captured before
    this returns, so advancing the iterator afterwards is safe.

    Returns:
      Whether a save was started: steps <= the latest are skipped unless
      `force` (which still never overwrites an existing step: orbax raises).

    Raises:
      integrity.NonFiniteStateError: some leaf holds NaN or Inf; nothing was written.
      CheckpointError: this or the previous (background) save failed, e.g.
        the disk is full.
    """
    self.check()
    if not force and self.latest_step() is not None and int(step) <= self.latest_step():
      self.policy.restart_clock()
      return False
    digest = integrity.state_digest(state)
    integrity.check_finite(digest, step)
    items = {
      STATE: ocp.args.StandardSave(state),
      CHECKSUM: ocp.args.JsonSave({p: d['sums'] for p, d in digest.items()}),
    }
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items[CONFIG] = ocp.args.JsonSave(config_to_json(config))
    try:
      started = self._mngr.save(int(step), args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _write_error(self.directory, step, e) from e
    self.policy.restart_clock()
    return started

  def check(self):
    """Raises CheckpointError if a background save has failed (disk full...).

    Never blocks: a save still in flight is not waited for. Orbax keeps the
    error of its finalize thread for `wait_until_finished` (its
    `check_for_errors` does not see it), which returns at once once the
    thread is done.
    """
    if not self._mngr.is_saving_in_progress():
      self.wait()

  def wait(self):
    """Blocks until the in-flight save (if any) is finalized on disk."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _write_error(self.directory, None, e) from e

  def close(self):
    """Waits for the in-flight save, then releases orbax's threads."""
    try:
      self._mngr.close()
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _write_error(self.directory, None, e) from e

  # --- restoring the training state -------------------------------------------

  def restore(
    self,
    abstract_state: PyTree,
    *,
    step: int | None = None,
    data_iter: Any = None,
    data_fallback: Any = None,
    data_verify: Any = None,
  ) -> tuple[PyTree, int]:
    """Restores the state onto the shardings of `abstract_state`.

    Args:
      abstract_state: the full state as a pytree of `jax.ShapeDtypeStruct`s
        with target shardings (e.g. from `jax.eval_shape` + the mesh rules).
        Leaves without a sharding land on the first local device.
      step: the step to restore; default: the newest usable one. A corrupt or
        partial newest checkpoint is skipped with a warning (and moved aside,
        so later saves of that step are not blocked).
      data_iter: a grain iterator whose position is restored in place from
        the same step.
      data_fallback: called with the step when the step holds no iterator
        state for this process (it was written by a different number of
        processes: grain saves one file per process); it must position
        `data_iter` itself, e.g. from the step when batches are a pure
        function of it. Without it, such a step is an error.
      data_verify: called with the step after the iterator position was
        restored; returns why that position does not belong to the step, or
        None. A position that does not fit is replaced via `data_fallback`,
        with a warning naming the file.

    A step is used only if every item it was saved with is there and checks
    out: the arrays against their checksums, the checksum item itself (its
    absence turns verification off only for steps whose own metadata shows
    they were saved without one), the iterator item, and the `step` leaf
    against the directory's name (a copied or renamed step directory).
    Anything else makes the step damaged, and the newest older one is used.

    Returns:
      (state, step).

    Raises:
      FileNotFoundError: no checkpoint, or `step` is not among them.
      CheckpointMismatchError: the checkpoint does not fit `abstract_state`.
      CheckpointError: no checkpoint could be read.
    """
    abstract_state = _with_target_shardings(abstract_state)

    def restore_step(step):
      step_dir = self._step_dir(step)
      integrity.check_fits(self._saved_tree(step), abstract_state, step_dir, partial=False)
      args = {STATE: ocp.args.StandardRestore(abstract_state)}
      saved_items = self._saved_items(step)
      if data_iter is not None:
        own_file = step_dir / DATA / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
        if not (step_dir / DATA).exists():
          if saved_items is None or DATA in saved_items:
            # Saved with an iterator that is gone now (deleted, a partial
            # copy): the step is incomplete, like one with a missing array.
            raise CheckpointCorruptError(
              f'{step_dir / DATA} is missing, though the step was saved with it'
            )
          if data_fallback is None:
            # This step was saved without an iterator, which falling back
            # would not fix.
            raise CheckpointMismatchError(
              f'{step_dir} holds no data-iterator state (saved without '
              'data_iter); restore without data_iter.'
            )
          logging.warning(
            '%s was saved without a data-iterator position; '
            'positioning the iterator from the step.',
            step_dir,
          )
        elif own_file.exists() or data_fallback is None:
          args[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        else:
          logging.warning(
            '%s; positioning the data iterator from the step instead.',
            _why_no_iterator_file(own_file),
          )
      restored = self._restore_items(step, args)
      integrity.verify(
        restored[STATE],
        restored.get(CHECKSUM),
        step_dir,
        checksum_saved=saved_items is None or CHECKSUM in saved_items,
      )
      integrity.check_step(restored[STATE], step, step_dir, self.step_leaf)
      if data_iter is not None and DATA in args and data_verify is not None:
        why = data_verify(step)
        if why is not None:
          if data_fallback is None:
            raise CheckpointCorruptError(f'{step_dir / DATA} is damaged: {why}')
          logging.warning(
            '%s does not belong to step %d (%s); positioning '
            'the data iterator from the step instead.',
            step_dir / DATA,
            step,
            why,
          )
          print(
            f'WARNING: {step_dir / DATA} does not belong to step {step} '
            f'({why}); the data iterator is positioned from the step.',
            flush=True,
          )
          args.pop(DATA)
      if data_iter is not None and DATA not in args:
        data_fallback(step)
      return restored[STATE]

    return self._restore_with_fallback(restore_step, step)

  def _quarantine(self, steps: list[int]):
    """Moves skipped corrupt steps to WORKDIR/corrupt_checkpoints/ (workdir.py).

    Without this, orbax would refuse to save those step numbers again once
    training catches up (it skips steps <= its latest), and every restart
    would warn about them anew. Moving instead of deleting keeps evidence.
    """
    if steps:
      self.move_aside(steps, workdir_lib.CORRUPT_CHECKPOINTS)

  def move_aside(self, steps: list[int], folder: str) -> epath.Path:
    """Moves finalized `steps` to WORKDIR/<folder>/<step>-<time>; returns the folder."""
    dest_root = workdir_lib.path(self.workdir, folder)
    if jax.process_index() == 0:
      dest_root.mkdir(parents=True, exist_ok=True)
      for s in steps:
        dest = dest_root / f'{s}-{time.strftime("%Y%m%d-%H%M%S")}'
        self._step_dir(s).rename(dest)
        logging.warning('Moved checkpoint %s to %s.', self._step_dir(s), dest)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('dirroute_checkpoint_move_aside')
    self._mngr.reload()
    return dest_root


_STEP_METADATA = '_CHECKPOINT_METADATA'  # orbax's per-step metadata file
# Passes over the step list before a reader gives up (steps keep coming and going
# while a trainer saves beside it).
_MAX_ROUNDS = 50


def _manager(
  directory: epath.Path,
  *,
  read_only: bool,
  keep: int = 1,
  permanent_every: int = 0,
  async_save: bool = True,
) -> ocp.CheckpointManager:
  """Orbax's manager for `directory`, reading only or writing with retention."""
  policies = [_policies.LatestN(keep)]
  if permanent_every > 0:
    policies.append(_policies.EveryNSteps(permanent_every))
  options = ocp.CheckpointManagerOptions(
    preservation_policy=_policies.AnyPreservationPolicy(policies),
    enable_async_checkpointing=async_save,
    save_interval_steps=0 if read_only else 1,
    # Removes `<step>.orbax-checkpoint-tmp` leftovers of a crashed save.
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
    create=not read_only,
  )
  # Explicit handlers let a fresh process read metadata before any save. A handler
  # registry, not `item_handlers=` (deprecated since orbax 0.11): one entry per item and
  # direction, the same handler for both.
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, handler, save_args, restore_args in (
    (STATE, ocp.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
    (
      DATA,
      grain.checkpoint.CheckpointHandler(),
      grain.checkpoint.CheckpointSave,
      grain.checkpoint.CheckpointRestore,
    ),
    (CONFIG, ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
    (CHECKSUM, ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
  ):
    registry.add(item, save_args, handler)
    registry.add(item, restore_args, handler)
  return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def _default_sharding():
  return jax.sharding.make_single_device_sharding(jax.local_devices()[0])


def _why_no_iterator_file(own_file: epath.Path) -> str:
  """Why this process's grain state is not in the step: deleted, or written
  by a different number of processes (grain saves one file per process)."""
  others = sorted(f.name for f in own_file.parent.glob('process_*.json'))
  counts = {n.rsplit('-of-', 1)[-1][: -len('.json')] for n in others}
  if others and str(jax.process_count()) not in counts:
    return (
      f'{own_file.parent} was written by {"/".join(sorted(counts))} '
      f'process(es), this run has {jax.process_count()} (no '
      f'{own_file.name})'
    )
  return (
    f'{own_file} is missing (deleted or never finished writing; the '
    f'step holds {others or "no iterator files"})'
  )


def _write_error(directory: epath.Path, step: int | None, e: Exception) -> CheckpointError:
  where = f'step {step} to ' if step is not None else ''
  return CheckpointError(
    f'saving checkpoint {where}{directory} failed ({type(e).__name__}: '
    f'{_short(e, 200)}); free space or fix the directory, then rerun to resume '
    'from the last complete checkpoint'
  )


def config_to_json(config: Any) -> dict[str, Any]:
  """A JSON-safe dict of a ConfigDict / mapping; odd values become strings."""
  if hasattr(config, 'to_json_best_effort'):  # ml_collections.ConfigDict
    return json.loads(config.to_json_best_effort())
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  elif dataclasses.is_dataclass(config):
    config = dataclasses.asdict(config)
  return json.loads(json.dumps(dict(config), default=str))


def _check_writable(directory: epath.Path):
  """Fails at construction rather than at the first async save, hours in."""
  try:
    workdir_lib.check_writable(directory, f'checkpoints to {directory}')
  except workdir_lib.NotWritableError as e:
    raise CheckpointError(str(e)) from e


def _with_target_shardings(tree: PyTree) -> PyTree:
  """Abstract leaves with a sharding each, so the saved one is never used."""
  default = jax.sharding.make_single_device_sharding(jax.local_devices()[0])

  def to_abstract(x):
    sharding = getattr(x, 'sharding', None) or default
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(to_abstract, tree)


def _short(e: Exception, limit: int = 300) -> str:
  s = str(e).replace('\n', ' ')
  return s if len(s) <= limit else s[:limit] + '...'
