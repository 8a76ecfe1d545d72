"""Params-only copies of a workdir (dirroute_jax/export/params_only.py,
launch/export_params.py): load_workdir opens them like the full workdir, float32 bit for bit,
bf16 as the rounded weights; the tools that take --workdir run on them."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.config import load_config_file
from dirroute_jax.export import params_only
from dirroute_jax.model.transformer import forward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def test_full_checkpoint_is_12_bytes_per_param():
  """What the README's 433M figures are computed from: float32 params + AdamW's mu and nu."""
  cfg = load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  assert params_only.state_bytes_per_param(cfg) == pytest.approx(12.0, rel=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_copy_loads_like_the_workdir(trained_workdir, tmp_path, dtype):
  full = load_workdir(trained_workdir)
  out = str(tmp_path / f"params_{dtype}")
  done = params_only.export_params(full, out, dtype=dtype)
  assert set(done.models) == {"routed", "baseline"} and done.step == full.step
  assert done.array_bytes == done.num_params * jnp.dtype(dtype).itemsize
  copy = load_workdir(out)
  assert copy.step == full.step and list(copy.models) == list(full.models)
  assert copy.tokenizer.fingerprint == full.tokenizer.fingerprint
  for name in full.models:
    for a, b in zip(jax.tree.leaves(full.params[name]), jax.tree.leaves(copy.params[name])):
      assert b.dtype == jnp.float32
      want = a if dtype == "float32" else a.astype(jnp.bfloat16).astype(jnp.float32)
      np.testing.assert_array_equal(np.asarray(b), np.asarray(want))
  tokens = np.asarray(next(full.data.eval_batches(1))["inputs"])[:2]
  ours, theirs = (
    np.asarray(forward(r.models["routed"], r.params["routed"], tokens)[0]) for r in (full, copy)
  )
  if dtype == "float32":
    np.testing.assert_array_equal(ours, theirs)
  else:
    assert np.abs(ours - theirs).max() < 0.05 * ours.std()
  # No optimizer state on disk: the copy's checkpoint is a fraction of the full one's.
  size = lambda p: sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, files in os.walk(str(workdir_lib.checkpoints(p)))
    for f in files
  )
  assert size(out) < size(trained_workdir) / (2.5 if dtype == "float32" else 4)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    params_only.export_params(full, out)


def test_launchers_run_on_the_copy(trained_workdir, tmp_path):
  out = tmp_path / "params"
  done = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "export_params.py"),
      f"--workdir={trained_workdir}",
      f"--out={out}",
      "--dtype=float32",
    ],
    capture_output=True,
    text=True,
    env=_env(),
  )
  assert done.returncode == 0, done.stderr
  sample = lambda w: subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "sample.py"),
      f"--workdir={w}",
      "--prompt=The ",
      "--max_new_tokens=8",
      "--temperature=0",
    ],
    capture_output=True,
    text=True,
    env=_env(),
    check=True,
  ).stdout.split("\n", 1)[1]
  assert sample(out) == sample(trained_workdir)  # same text, every model
