"""Multi-host training on one machine: 2 processes x 1 CPU device end with the same weights as
1 process x 2 devices. This exercises what a pod needs and a single process never does:
`jax.distributed.initialize`, global arrays from per-host batches, per-host data shards, gloo
collectives, Orbax's collective save and one grain iterator state per process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dirroute_jax.config import load_config_file
from dirroute_jax.data.pipeline import make_data
from dirroute_jax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_cmd(workdir, cache, *extra):
  return [
    sys.executable,
    os.path.join(REPO, "launch", "train.py"),
    "--config=" + os.path.join(REPO, "configs", "tiny.py"),
    f"--workdir={workdir}",
    "--compilation_cache=",
    "--config.data.tokenizer=bytes",
    "--config.seq_len=32",
    "--config.batch_size=8",
    f"--config.steps={STEPS}",
    f"--config.checkpoint_every={STEPS}",
    "--config.eval_every=0",
    f"--config.data.cache_dir={cache}",
    *extra,
  ]


def _build_cache(tmp_path):
  """Builds the corpus and token cache once, so that the training processes only read it."""
  cache = tmp_path / "cache"
  cfg = load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  cfg.data.tokenizer, cfg.data.cache_dir, cfg.seq_len, cfg.batch_size = "bytes", str(cache), 32, 8
  make_data(cfg)
  return cache


def _start(cmd, devices, log_path):
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }
  for k in [k for k in env if k.startswith(("SLURM_", "OMPI_", "TPU_"))]:
    del env[k]  # the child must not mistake this machine for a cluster
  log = open(log_path, "w")
  return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def _wait(procs, timeout=240):
  failures = []
  for proc, log in procs:
    try:
      rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      rc = "timeout"
    log.close()
    if rc != 0:
      failures.append(f"{log.name} (rc={rc}):\n" + open(log.name).read()[-3000:])
  assert not failures, "\n".join(failures)


def _restore_state(workdir):
  """The saved state onto this process's first device, whatever topology wrote it."""
  path = os.path.join(str(workdir), "checkpoints", str(STEPS), "state")
  ckptr = ocp.StandardCheckpointer()
  tree = ckptr.metadata(path).item_metadata.tree
  device = jax.sharding.make_single_device_sharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return ckptr.restore(path, target)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_two_devices(tmp_path):
  cache = _build_cache(tmp_path)

  port = _free_port()
  procs = [_start(_train_cmd(tmp_path / "one", cache), 2, tmp_path / "one.log")]
  for i in range(2):
    procs.append(
      _start(
        _train_cmd(
          tmp_path / "two",
          cache,
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={i}",
        ),
        1,
        tmp_path / f"two.{i}.log",
      )
    )
  _wait(procs)

  log0 = open(tmp_path / "two.0.log").read()
  assert "2 device(s)" in log0 and f"step {STEPS}/{STEPS}" in log0
  assert f"step {STEPS}/{STEPS}" not in open(tmp_path / "two.1.log").read()  # process 0 logs
  # One grain iterator position per host, each at the step the weights were saved at.
  data_dir = tmp_path / "two" / "checkpoints" / str(STEPS) / "data"
  for i in range(2):
    assert json.loads((data_dir / f"process_{i}-of-2.json").read_text()) == {"next_index": STEPS}

  one, two = _restore_state(tmp_path / "one"), _restore_state(tmp_path / "two")
  assert jax.tree.structure(one) == jax.tree.structure(two)
  assert int(two["step"]) == STEPS
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(one)[0], jax.tree.leaves(two)):
    np.testing.assert_allclose(
      np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6, err_msg=jax.tree_util.keystr(path)
    )
  # Training moved the weights: the comparison is not of two untouched inits.
  assert any(
    np.abs(np.asarray(m)).max() > 0
    for m in jax.tree.leaves(one["models"]["routed"]["opt_state"])
    if np.ndim(m) >= 2
  )


def test_detect_cluster_from_environment():
  detect = distributed.detect_cluster
  assert detect({}) is None
  slurm = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
  }
  assert detect(slurm) == "slurm"
  assert detect({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: nothing to coordinate
  batch_script = dict(slurm)
  del batch_script["SLURM_STEP_NODELIST"]
  assert detect(batch_script) is None  # in the allocation but not in an srun step
  assert detect({"OMPI_COMM_WORLD_SIZE": "4"}) == "ompi"
  assert detect({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == "tpu"
  assert detect({"TPU_WORKER_HOSTNAMES": "localhost"}) is None


def test_cloud_tpu_vm_is_read_from_the_pci_bus_without_private_jax(tmp_path, monkeypatch):
  def device(name, vendor, dev):
    (tmp_path / name).mkdir()
    (tmp_path / name / "vendor").write_text(vendor + "\n")
    (tmp_path / name / "device").write_text(dev + "\n")

  device("0000:00:04.0", "0x1ae0", "0x0042")  # Google's gVNIC: a GCE VM, not a TPU
  device("0000:00:05.0", "0x8086", "0x005e")  # another vendor with a TPU-like id
  monkeypatch.setenv("TPU_LIBRARY_PATH", "/fake/libtpu.so")
  assert not distributed._on_cloud_tpu_vm(str(tmp_path))
  device("0000:00:06.0", "0x1ae0", "0x005e")  # a TPU v4 chip
  assert distributed._on_cloud_tpu_vm(str(tmp_path))
  monkeypatch.delenv("TPU_LIBRARY_PATH")
  monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
  assert not distributed._on_cloud_tpu_vm(str(tmp_path))  # chips but no libtpu: no TPU backend


def test_initialize_is_a_noop_for_one_process(monkeypatch):
  for k in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_", "TPU_"))]:
    monkeypatch.delenv(k)
  assert not distributed.initialize()
  assert not distributed.initialize(num_processes=1)
  assert not distributed.initialize("127.0.0.1:1", 2, 0, mode="off")
  assert jax.process_count() == 1


def test_incomplete_explicit_parameters_are_an_error():
  with pytest.raises(ValueError, match="--process_id"):
    distributed.initialize(coordinator_address="127.0.0.1:1234", num_processes=2)
  with pytest.raises(ValueError, match="unknown"):
    distributed.initialize(mode="sometimes")
