"""Multi-host start-up: one call before any JAX computation turns N processes into one job.

`jax.distributed.initialize` must run in every process before the first device is touched;
after it, `jax.devices()` lists every host's devices, `jax.process_index()` picks this host's
data shard (data/pipeline.py) and Orbax saves collectively. Where the parameters come from:

  explicit   --coordinator_address=HOST:PORT --num_processes=N --process_id=I  (any cluster,
             and the 2-process localhost test)
  SLURM      SLURM_NTASKS > 1 inside `srun`: JAX derives everything from SLURM_* (coordinator =
             first node of the step's node list, process id = SLURM_PROCID) and gives each
             process ONE GPU (SLURM_LOCALID): srun one task per GPU, or pass the explicit
             flags with --local_device_ids for one process per node (launch/slurm.py does)
  Cloud TPU  a TPU VM with libtpu: JAX reads the worker list from the metadata server
  Open MPI   OMPI_COMM_WORLD_SIZE > 1 under mpirun

Anything else is one process and `initialize` does nothing, so the same `launch/train.py`
command runs on a laptop, a TPU VM and a SLURM node.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Sequence

import jax
from absl import logging

MODES = ("auto", "on", "off")
_SLURM_STEP_VARS = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)


def detect_cluster(environ=None) -> str | None:
  """The multi-process environment this process runs in ("slurm", "tpu", "ompi"), or None.

  A SLURM step or MPI job with one task needs no coordination service and does not count. Any
  Cloud TPU VM counts (JAX learns the worker count from the metadata server; one worker is
  fine). `environ` (for tests) replaces os.environ and skips the TPU VM probe.
  """
  env = os.environ if environ is None else environ
  # Inside an `srun` step (what JAX's SLURM detection reads), not merely inside an allocation:
  # a batch script running one python process must not wait for peers that never come.
  if all(k in env for k in _SLURM_STEP_VARS) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
    return "ompi"
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if len([h for h in hosts.split(",") if h]) > 1 or (environ is None and _on_cloud_tpu_vm()):
    return "tpu"
  return None


# Google's PCI vendor id and its TPU chips' device ids (v3, v4, v5p, v5e, v6e, TPU7x, ...): the
# table jax's own probe reads at `import jax` (it is private there, so it is repeated here).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset(
  {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076", "0x007c", "0x0083"}
)


def _on_cloud_tpu_vm(pci_devices: str = "/sys/bus/pci/devices") -> bool:
  """A Cloud TPU VM: TPU chips on the PCI bus and libtpu installed, the test `import jax` makes
  before it starts the TPU backend. Read from sysfs, so no device is touched before
  `jax.distributed.initialize`. A chip newer than the table: pass --distributed=on."""
  if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
    return False
  for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    try:
      with open(vendor) as f, open(os.path.join(os.path.dirname(vendor), "device")) as g:
        if f.read().strip() == _GOOGLE_PCI_VENDOR and g.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def _cpu_collectives() -> None:
  """Cross-process collectives on CPU (the localhost test) need gloo: the default in the jax we
  test (0.10, 0.12), but older releases defaulted to none, which fails at the first all-reduce."""
  if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _parse_ids(local_device_ids) -> list[int] | None:
  if local_device_ids is None or local_device_ids == "":
    return None
  if isinstance(local_device_ids, str):
    return [int(x) for x in local_device_ids.split(",") if x.strip()]
  if isinstance(local_device_ids, int):
    return [local_device_ids]
  return [int(x) for x in local_device_ids]


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: str | int | Sequence[int] | None = None,
  *,
  mode: str = "auto",
) -> bool:
  """Joins this process to a multi-process JAX job, or does nothing for a single process.

  Args:
    coordinator_address: "host:port" of process 0's coordination service.
    num_processes: processes in the job; 1 (or unset outside a cluster) means no-op.
    process_id: this process's rank in [0, num_processes).
    local_device_ids: devices this process drives ("0,1" or a list), e.g. one GPU per process.
    mode: "auto" initialises when explicit parameters are given or a multi-process cluster is
      detected (`detect_cluster`); "on" always calls `jax.distributed.initialize` (JAX fills in
      unset parameters from the cluster); "off" never does.

  Returns:
    Whether the distributed runtime is (now) initialised.

  Raises:
    ValueError: an unknown mode, or explicit parameters that are incomplete.
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r} is unknown; use one of {MODES}.")
  if jax.distributed.is_initialized():
    return True
  if mode == "off" or num_processes == 1:
    return False
  ids = _parse_ids(local_device_ids)
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError(
        "multi-process training needs all of --coordinator_address=HOST:PORT, "
        f"--num_processes and --process_id (got coordinator_address={coordinator_address!r}, "
        f"num_processes={num_processes!r}, process_id={process_id!r}); or give none of them "
        "on SLURM / Cloud TPU, where they are detected."
      )
  elif mode == "auto":
    cluster = detect_cluster()
    if cluster is None:
      return False
    logging.info("Detected a multi-process %s environment.", cluster)
  _cpu_collectives()
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    local_device_ids=ids,
  )
  logging.info(
    "JAX distributed: process %d of %d, %d local / %d global devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
