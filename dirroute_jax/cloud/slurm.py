"""The sbatch script that trains on a SLURM GPU cluster, as a pure function of a `SlurmJob`.

The command line is launch/slurm.py (it prints the script, or writes and submits it).

Process layout (`procs`):
  node (default)  one JAX process per node driving all of its GPUs (`srun --ntasks-per-node=1`,
                  --local_device_ids=0,...,G-1): one data loader per host, NCCL inside the node.
  gpu             one process per GPU (`--ntasks-per-node=G`, --local_device_ids=$SLURM_LOCALID),
                  the layout JAX's own SLURM detection assumes.
Either way every process gets the same explicit multi-host flags as on any other cluster
(dirroute_jax/train/distributed.py): the coordinator is the first node of $SLURM_JOB_NODELIST
on a port derived from the job id, the process id is $SLURM_PROCID. SLURM sets those per task,
so they are expanded inside `srun`'s `bash -c`, not in the batch script.

The script first checks that jax sees the GPUs (`check_gpu`) and stops with the install line
otherwise: `pip install -e '.[cuda]'` in the venv (jax's CUDA 12 wheels).

The workdir must be on a filesystem every node sees (each process writes its part of every
checkpoint). `--requeue` makes a preempted or failed-node job start again, and the rerun
resumes from the latest checkpoint. SLURM sends SIGTERM before preempting a job or at its time
limit; launch/train.py then saves and exits PREEMPTED (75, dirroute_jax/exit_codes.py), and the
script requeues the job itself (the time limit case, which SLURM does not requeue). Any other
failure is left failed: it would repeat. The flags for launch/train.py are checked first, with
its own definitions and the config loaded.
"""

from __future__ import annotations

import dataclasses
import os
import shlex

from dirroute_jax import exit_codes
from dirroute_jax import workdir as workdir_lib
from dirroute_jax.cli import check_train_args
from dirroute_jax.cloud import REPO
from dirroute_jax.train.lock import STALE_SECS

PROCS = ("node", "gpu")
# Run before srun: a venv with CPU-only jax would otherwise train on the nodes' CPUs.
GPU_CHECK = (
  'import jax, sys; jax.default_backend() == "gpu" or sys.exit("error: jax sees no '
  'GPU on this node (backend " + jax.default_backend() + "); install the CUDA wheels '
  "in the venv: pip install -e '.[cuda]'\")"
)


@dataclasses.dataclass(frozen=True)
class SlurmJob:
  nodes: int
  gpus_per_node: int
  config: str
  workdir: str
  procs: str = "node"
  job_name: str = "dirroute"
  partition: str | None = None
  account: str | None = None
  time: str = "24:00:00"
  cpus_per_node: int | None = None
  repo_dir: str = REPO
  venv: str | None = os.path.join(REPO, ".venv")
  venv_python: str = "python3.12"  # creates `venv` if missing; the newest jax needs >= 3.12
  python: str = "python"
  port_base: int = 20000
  check_gpu: bool = True
  train_args: tuple[str, ...] = ()

  @property
  def tasks_per_node(self) -> int:
    return 1 if self.procs == "node" else self.gpus_per_node


def check_job(job: SlurmJob) -> None:
  if job.procs not in PROCS:
    raise ValueError(f"--procs={job.procs!r} is unknown; use one of {PROCS}.")
  if job.nodes < 1 or job.gpus_per_node < 1:
    raise ValueError("--nodes and --gpus_per_node must be >= 1.")
  if not workdir_lib.is_remote(job.workdir) and not os.path.isabs(job.workdir):  # gs://: shared
    raise ValueError(
      f"--workdir={job.workdir!r}: give an absolute path on a filesystem every "
      "node mounts (the job runs from --repo_dir, not from here)."
    )
  check_train_args(job.config, job.workdir, job.train_args, REPO)


def venv_commands(job: SlurmJob) -> list[list[str]]:
  """Creates `job.venv` when it does not exist yet, on the machine that submits (a login node
  with internet; compute nodes often have none, and they see the venv on the shared
  filesystem): `job.venv_python -m venv`, then the project with jax's CUDA wheels
  (`pip install -e '.[cuda]'`). An existing venv is used as it is."""
  if not job.venv or os.path.exists(os.path.join(job.venv, "bin", "python")):
    return []
  pip = os.path.join(job.venv, "bin", "pip")
  return [
    [job.venv_python, "-m", "venv", job.venv],
    [pip, "install", "-q", "-U", "pip"],
    [pip, "install", "-q", "-e", f"{job.repo_dir}[cuda]"],
  ]


def _any_of(codes) -> str:
  """A bash test: $status is one of `codes` (exit_codes.RERUN...: one table for both
  launchers)."""
  return "[[ " + " || ".join(f"$status -eq {c}" for c in codes) + " ]]"


def sbatch_script(job: SlurmJob) -> str:
  """The whole batch script; a pure function of `job`."""
  check_job(job)
  g = job.gpus_per_node
  directives = [
    f"--job-name={job.job_name}",
    f"--nodes={job.nodes}",
    f"--ntasks-per-node={job.tasks_per_node}",
    f"--gpus-per-node={g}",
    "--exclusive",
    f"--time={job.time}",
    "--output=%x-%j.out",
    "--requeue",
  ]
  if job.cpus_per_node:
    directives.append(f"--cpus-per-task={job.cpus_per_node // job.tasks_per_node}")
  directives += [f"--partition={job.partition}"] * bool(job.partition)
  directives += [f"--account={job.account}"] * bool(job.account)
  local_ids = ",".join(map(str, range(g))) if job.procs == "node" else '"$SLURM_LOCALID"'
  layout = (
    f"one JAX process per node driving its {g} GPUs"
    if job.procs == "node"
    else "one JAX process per GPU"
  )
  train_args = [f"--config={job.config}", f"--workdir={job.workdir}", *job.train_args]
  per_task = (
    f'exec {shlex.quote(job.python)} launch/train.py "$@" '
    '--coordinator_address="$COORDINATOR" --num_processes="$SLURM_NTASKS" '
    f'--process_id="$SLURM_PROCID" --local_device_ids={local_ids}'
  )
  lines = [
    "#!/bin/bash",
    f"# Generated by launch/slurm.py: {job.nodes} node(s) x {g} GPUs, {layout}.",
    *(f"#SBATCH {d}" for d in directives),
    "",
    "set -eo pipefail",
    f"cd {shlex.quote(job.repo_dir)}",
  ]
  if job.venv:
    lines.append(f"source {shlex.quote(os.path.join(job.venv, 'bin', 'activate'))}")
  if job.check_gpu:
    lines += [
      "# Stop here if jax has no GPU backend (pip install -e '.[cuda]').",
      f"{shlex.quote(job.python)} -c {shlex.quote(GPU_CHECK)} >/dev/null",
    ]
  lines += [
    "# Process 0 hosts the coordinator on the allocation's first node (sed, not head: head",
    "# would close the pipe early and pipefail would turn scontrol's SIGPIPE into an exit).",
    'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p):'
    f'$(({job.port_base} + SLURM_JOB_ID % 10000))"',
    "export COORDINATOR",
    f"TRAIN_ARGS=({' '.join(shlex.quote(a) for a in train_args)})",
    "# Single quotes: SLURM_PROCID / SLURM_LOCALID are set per task, so expand them in it.",
    "# SLURM sends SIGTERM to this script too; a trap (not inherited by srun's tasks) keeps it",
    "# alive until the training step has saved, so the status below is acted on.",
    "trap 'echo \"SIGTERM: waiting for the training step to save\" >&2' TERM",
    "status=0",
    f"srun --kill-on-bad-exit=1 --ntasks-per-node={job.tasks_per_node} "
    f"bash -c {shlex.quote(per_task)} _ \"${{TRAIN_ARGS[@]}}\" || status=$?",
    f"if {_any_of(exit_codes.RERUN)}; then  # SIGTERM: saved, resume in a new allocation",
    '  echo "preempted (status $status): requeueing job $SLURM_JOB_ID"',
    '  scontrol requeue "$SLURM_JOB_ID"',
    f"elif {_any_of(exit_codes.RERUN_AFTER_PREEMPTION)} "
    "&& [[ ${SLURM_RESTART_COUNT:-0} -gt 0 ]]; then",
    "  # Requeued after a node died without SIGTERM: its workdir lease expires "
    f"{int(STALE_SECS)} s after its last heartbeat.",
    f'  echo "workdir lease of the previous run not expired; requeueing in {int(STALE_SECS)} s"',
    f"  sleep {int(STALE_SECS)} && scontrol requeue \"$SLURM_JOB_ID\"",
    "fi",
    'exit "$status"',
    "",
  ]
  return "\n".join(lines)
