"""Checkpoints of the training state, the data-iterator position and the config.

One step directory per save, written by orbax's `CheckpointManager`:

  WORKDIR/checkpoints/<step>/state/   every model's params + opt_state, the step
  WORKDIR/checkpoints/<step>/data/    grain iterator position (if one is given)
  WORKDIR/checkpoints/<step>/config/  the run's config as JSON (if one is given)

Saving all three in the same step is what makes a resume exact: the data
position can never drift from the weights it was trained into.

Crash safety comes from orbax: a save is written to
`<step>.orbax-checkpoint-tmp` and renamed to `<step>` only once every item is
committed (a `commit_success.txt` marker on GCS). Old steps are deleted only
after the new one is finalized, and `latest_step()` only sees finalized steps,
so a crash mid-save leaves the previous good checkpoint untouched.

Restores always use the caller's target shardings, never the saved ones, so a
checkpoint written on a pod loads onto one CPU or any other mesh.
"""

from collections.abc import Mapping
import dataclasses
import json
import time
from typing import Any
import uuid

from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

PyTree = Any

STATE = 'state'
DATA = 'data'
CONFIG = 'config'

_policies = ocp.checkpoint_managers


class CheckpointError(RuntimeError):
  """A checkpoint directory cannot be written, or holds no usable checkpoint."""


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the expected state (another config wrote it)."""


class Checkpointer:
  """Saves and restores a training run under `workdir/checkpoints/`.

  Keeps the `keep` newest steps plus, permanently, every step that is a
  multiple of `permanent_every` (if > 0), so long runs keep a sparse history
  for later analysis without filling the disk.
  """

  def __init__(self, workdir: epath.PathLike, *, keep: int = 3,
               permanent_every: int = 0, async_save: bool = True,
               read_only: bool = False):
    if keep < 1:
      raise ValueError(f'keep must be >= 1 (got {keep}): keep=0 would delete '
                       'the checkpoint just written.')
    # Orbax's tensorstore paths must be absolute; "workdirs/tiny" from a shell is common.
    self.workdir = epath.Path(workdir)
    if '://' not in str(workdir):
      self.workdir = self.workdir.absolute()
    self.directory = self.workdir / 'checkpoints'
    self.read_only = read_only
    if not read_only:
      _check_writable(self.directory)
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
    # Explicit handlers let a fresh process read metadata before any save.
    handlers = {
        STATE: ocp.StandardCheckpointHandler(),
        DATA: grain.checkpoint.CheckpointHandler(),
        CONFIG: ocp.JsonCheckpointHandler(),
    }
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options, item_handlers=handlers)

  # --- saving -----------------------------------------------------------------

  def save(self, step: int, state: PyTree, *, data_iter: Any = None,
           config: Any = None, force: bool = False) -> bool:
    """Starts saving `state` (and the iterator position and config) at `step`.

    Returns as soon as device arrays are copied to host (if async); the write
    finishes in the background. The data-iterator state is captured before
    this returns, so advancing the iterator afterwards is safe.

    Returns:
      Whether a save was started: steps <= the latest are skipped unless
      `force` (which still never overwrites an existing step: orbax raises).
    """
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items[CONFIG] = ocp.args.JsonSave(config_to_json(config))
    return self._mngr.save(
        int(step), args=ocp.args.Composite(**items), force=force)

  def wait(self):
    """Blocks until the in-flight save (if any) is finalized on disk."""
    self._mngr.wait_until_finished()

  def close(self):
    """Waits for the in-flight save, then releases orbax's threads."""
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

  # --- restoring --------------------------------------------------------------

  def restore(self, abstract_state: PyTree, *, step: int | None = None,
              data_iter: Any = None,
              data_fallback: Any = None) -> tuple[PyTree, int]:
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

    Returns:
      (state, step).

    Raises:
      FileNotFoundError: no checkpoint, or `step` is not among them.
      CheckpointMismatchError: the checkpoint does not fit `abstract_state`.
      CheckpointError: no checkpoint could be read.
    """
    abstract_state = _with_target_shardings(abstract_state)

    def restore_step(step):
      _check_fits(self._saved_tree(step), abstract_state,
                  self._step_dir(step), partial=False)
      args = {STATE: ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        if not (self._step_dir(step) / DATA).exists():
          # Orbax commits all items of a step atomically: this step was
          # saved without an iterator, which falling back would not fix.
          raise CheckpointMismatchError(
              f'{self._step_dir(step)} holds no data-iterator state (saved '
              'without data_iter); restore without data_iter.')
        own_file = (self._step_dir(step) / DATA /
                    f'process_{jax.process_index()}-of-{jax.process_count()}.json')
        if own_file.exists() or data_fallback is None:
          args[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        else:
          logging.warning(
              '%s was written by a different number of processes (no %s); '
              'positioning the data iterator from the step instead.',
              self._step_dir(step), own_file.name)
      state = self._mngr.restore(step, args=ocp.args.Composite(**args))[STATE]
      if data_iter is not None and DATA not in args:
        data_fallback(step)
      return state

    return self._restore_with_fallback(restore_step, step)

  def restore_subtree(self, abstract_subtree: PyTree, *,
                      step: int | None = None) -> tuple[PyTree, int]:
    """Restores only the leaves present in `abstract_subtree` (e.g. params).

    Analysis tools need params only; this skips reading optimizer moments.
    `abstract_subtree` mirrors the saved state's nesting with parts left
    out, e.g. `{'models': {'routed': {'params': ...}}}`.
    """
    abstract_subtree = _with_target_shardings(abstract_subtree)

    def restore_step(step):
      _check_fits(self._saved_tree(step), abstract_subtree,
                  self._step_dir(step), partial=True)
      args = ocp.args.PyTreeRestore(
          item=abstract_subtree,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_subtree),
          partial_restore=True)
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        return ckptr.restore(self._step_dir(step) / STATE, args=args)

    return self._restore_with_fallback(restore_step, step)

  def restore_config(self, *, step: int | None = None) -> dict[str, Any]:
    """The config JSON saved with `step` (default: the newest step with one)."""
    steps = self.all_steps()
    candidates = [int(step)] if step is not None else reversed(steps)
    for s in candidates:
      if (self._step_dir(s) / CONFIG).exists():
        args = ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
        return self._mngr.restore(s, args=args)[CONFIG]
    where = f'step {step}' if step is not None else 'any step'
    raise FileNotFoundError(
        f'no saved config for {where} in {self.directory}; steps: {steps}')

  # --- internals --------------------------------------------------------------

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

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
            f'no complete checkpoint for step {step} in {self.directory}; '
            f'available steps: {steps}')
      try:
        return restore_step(int(step)), int(step)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-exception-caught
        raise CheckpointError(
            f'checkpoint {self._step_dir(step)} is unreadable: '
            f'{type(e).__name__}: {e}') from e
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    failures = []
    for s in reversed(steps):
      try:
        restored = restore_step(s)
      except CheckpointMismatchError:
        raise  # Older steps come from the same run; falling back won't help.
      except Exception as e:  # pylint: disable=broad-exception-caught
        logging.warning(
            'Checkpoint %s is corrupt or partial (%s: %s); falling back to '
            'the previous one.', self._step_dir(s), type(e).__name__,
            _short(e))
        failures.append((s, e))
        continue
      self._quarantine([f for f, _ in failures])
      return restored, s
    details = '; '.join(
        f'step {s}: {type(e).__name__}: {_short(e)}' for s, e in failures)
    raise CheckpointError(
        f'no usable checkpoint in {self.directory} (tried steps '
        f'{[s for s, _ in failures]}): {details}') from failures[0][1]

  def _quarantine(self, steps: list[int]):
    """Moves skipped corrupt steps to WORKDIR/corrupt_checkpoints/.

    Without this, orbax would refuse to save those step numbers again once
    training catches up (it skips steps <= its latest), and every restart
    would warn about them anew. Moving instead of deleting keeps evidence.
    """
    if not steps or self.read_only:
      return
    if jax.process_index() == 0:
      dest_root = self.workdir / 'corrupt_checkpoints'
      dest_root.mkdir(parents=True, exist_ok=True)
      for s in steps:
        dest = dest_root / f'{s}-{time.strftime("%Y%m%d-%H%M%S")}'
        self._step_dir(s).rename(dest)
        logging.warning('Moved corrupt checkpoint %s to %s.',
                        self._step_dir(s), dest)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('dirroute_checkpoint_quarantine')
    self._mngr.reload()


def restore_config(workdir: epath.PathLike, *,
                   step: int | None = None) -> dict[str, Any]:
  """The config dict saved in `workdir` (by default the newest step with one).

  For analysis tools that open a workdir without knowing its config.
  """
  with Checkpointer(workdir, read_only=True) as ckpt:
    return ckpt.restore_config(step=step)


def restore_params(workdir: epath.PathLike,
                   abstract_params_by_model: Mapping[str, PyTree], *,
                   step: int | None = None) -> tuple[dict[str, PyTree], int]:
  """Restores only `params` of each named model, e.g. on one CPU for analysis.

  Args:
    workdir: the training run's workdir.
    abstract_params_by_model: {model name: abstract params}, with target
      shardings (or none: first local device).
    step: default: the newest usable step.

  Returns:
    ({model name: params}, step).
  """
  subtree = {'models': {name: {'params': p}
                        for name, p in abstract_params_by_model.items()}}
  with Checkpointer(workdir, read_only=True) as ckpt:
    restored, step = ckpt.restore_subtree(subtree, step=step)
  return {name: m['params'] for name, m in restored['models'].items()}, step


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
  probe = directory / f'.write-probe-{uuid.uuid4().hex}'
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CheckpointError(
        f'cannot write checkpoints to {directory}: {type(e).__name__}: {e}'
    ) from e


def _with_target_shardings(tree: PyTree) -> PyTree:
  """Abstract leaves with a sharding each, so the saved one is never used."""
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def to_abstract(x):
    sharding = getattr(x, 'sharding', None) or default
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(to_abstract, tree)


def _path_str(path) -> str:
  """'models/routed/opt_state/0/mu/w' for a jax key path (as orbax names it)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _check_fits(saved_tree: PyTree, abstract: PyTree, step_dir: epath.Path,
                partial: bool):
  """Raises CheckpointMismatchError naming the first leaf that differs.

  Orbax's own errors for this are deep tensorstore messages; a changed
  config (say d_model) deserves a message that says what to do.
  """
  saved = {_path_str(p): leaf for p, leaf
           in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  expected = {_path_str(p): leaf for p, leaf
              in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  hint = (f'The checkpoint in {step_dir.parent} was written by a different '
          'config; use a fresh --workdir or the original config.')
  missing = [p for p in expected if p not in saved]
  if missing:
    want = expected[missing[0]]
    raise CheckpointMismatchError(
        f'{step_dir} has no leaf {missing[0]!r} (expected shape '
        f'{tuple(want.shape)} {want.dtype}; {len(missing)} missing in all). '
        f'{hint}')

  def saved_sig(path):
    leaf = saved[path]
    return tuple(getattr(leaf, 'shape', ())), getattr(leaf, 'dtype', None)

  def differs(path):
    shape, dtype = saved_sig(path)
    want = expected[path]
    return (shape != tuple(want.shape)
            or (dtype is not None and dtype != want.dtype))

  bad = [p for p in expected if differs(p)]
  if bad:
    (shape, dtype), want = saved_sig(bad[0]), expected[bad[0]]
    raise CheckpointMismatchError(
        f'{step_dir}: leaf {bad[0]!r} has saved shape {shape} {dtype} but '
        f'expected shape {tuple(want.shape)} {want.dtype} ({len(bad)} leaves '
        f'differ). {hint}')
  if not partial:
    extra = [p for p in saved if p not in expected]
    if extra:
      raise CheckpointMismatchError(
          f'{step_dir} has leaves the expected state lacks, first: '
          f'{extra[0]!r} ({len(extra)} in all). {hint}')


def _short(e: Exception, limit: int = 300) -> str:
  s = str(e).replace('\n', ' ')
  return s if len(s) <= limit else s[:limit] + '...'
