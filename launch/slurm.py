"""Writes (and submits) the sbatch script that trains on a SLURM GPU cluster.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --config=configs/433m.py \
      --workdir=/shared/runs/433m --partition=gpu --dry_run \
      -- --config.data.files='/shared/fineweb/sample-10BT/*.parquet'

`--dry_run` prints the script; without it the script is written to --script and passed to
`sbatch`. Everything after `--` goes to launch/train.py unchanged.

Process layout (--procs):
  node (default)  one JAX process per node driving all of its GPUs (`srun --ntasks-per-node=1`,
                  --local_device_ids=0,...,G-1): one data loader per host, NCCL inside the node.
  gpu             one process per GPU (`--ntasks-per-node=G`, --local_device_ids=$SLURM_LOCALID),
                  the layout JAX's own SLURM detection assumes.
Either way every process gets the same explicit multi-host flags as on any other cluster
(dirroute_jax/train/distributed.py): the coordinator is the first node of $SLURM_JOB_NODELIST
on a port derived from the job id, the process id is $SLURM_PROCID. SLURM sets those per task,
so they are expanded inside `srun`'s `bash -c`, not in the batch script.

The script first checks that jax sees the GPUs (`--nocheck_gpu` skips it) and stops with the
install line otherwise: `pip install -e '.[cuda]'` in the venv (jax's CUDA 12 wheels).

The workdir must be on a filesystem every node sees (each process writes its part of every
checkpoint). `--requeue` makes a preempted or failed-node job start again, and the rerun
resumes from the latest checkpoint. SLURM sends SIGTERM before preempting a job or at its time
limit; launch/train.py then saves and exits PREEMPTED (75, dirroute_jax/exit_codes.py), and the
script requeues the job itself (the time limit case, which SLURM does not requeue). Any other
failure is left failed: it would repeat. The flags after `--` are checked here first, with
launch/train.py's own definitions and the config loaded.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys

from absl import app, flags

from dirroute_jax import exit_codes
from dirroute_jax.cli import check_train_args, fail, parse_flags
from dirroute_jax.train.lock import STALE_SECS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCS = ("node", "gpu")
# Run before srun: a venv with CPU-only jax would otherwise train on the nodes' CPUs.
GPU_CHECK = ('import jax, sys; jax.default_backend() == "gpu" or sys.exit("error: jax sees no '
             'GPU on this node (backend " + jax.default_backend() + "); install the CUDA wheels '
             "in the venv: pip install -e '.[cuda]'\")")


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
  if "://" not in job.workdir and not os.path.isabs(job.workdir):  # gs://: shared anyway
    raise ValueError(f"--workdir={job.workdir!r}: give an absolute path on a filesystem every "
                     "node mounts (the job runs from --repo_dir, not from here).")
  check_train_args(job.config, job.workdir, job.train_args, REPO)


def sbatch_script(job: SlurmJob) -> str:
  """The whole batch script; a pure function of `job`."""
  check_job(job)
  g = job.gpus_per_node
  directives = [f"--job-name={job.job_name}", f"--nodes={job.nodes}",
                f"--ntasks-per-node={job.tasks_per_node}", f"--gpus-per-node={g}",
                "--exclusive", f"--time={job.time}", "--output=%x-%j.out", "--requeue"]
  if job.cpus_per_node:
    directives.append(f"--cpus-per-task={job.cpus_per_node // job.tasks_per_node}")
  directives += [f"--partition={job.partition}"] * bool(job.partition)
  directives += [f"--account={job.account}"] * bool(job.account)
  local_ids = ",".join(map(str, range(g))) if job.procs == "node" else '"$SLURM_LOCALID"'
  layout = (f"one JAX process per node driving its {g} GPUs" if job.procs == "node"
            else "one JAX process per GPU")
  train_args = [f"--config={job.config}", f"--workdir={job.workdir}", *job.train_args]
  per_task = (f'exec {shlex.quote(job.python)} launch/train.py "$@" '
              '--coordinator_address="$COORDINATOR" --num_processes="$SLURM_NTASKS" '
              f'--process_id="$SLURM_PROCID" --local_device_ids={local_ids}')
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
    lines += ["# Stop here if jax has no GPU backend (pip install -e '.[cuda]').",
              f"{shlex.quote(job.python)} -c {shlex.quote(GPU_CHECK)} >/dev/null"]
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
      f"if [[ $status -eq {exit_codes.PREEMPTED} ]]; then  # SIGTERM: saved, resume in a new "
      "allocation",
      '  echo "preempted (status 75): requeueing job $SLURM_JOB_ID"',
      '  scontrol requeue "$SLURM_JOB_ID"',
      f"elif [[ $status -eq {exit_codes.BUSY} && ${{SLURM_RESTART_COUNT:-0}} -gt 0 ]]; then",
      "  # Requeued after a node died without SIGTERM: its workdir lease expires "
      f"{int(STALE_SECS)} s after its last heartbeat.",
      f'  echo "workdir lease of the previous run not expired; requeueing in {int(STALE_SECS)} s"',
      f"  sleep {int(STALE_SECS)} && scontrol requeue \"$SLURM_JOB_ID\"",
      "fi",
      'exit "$status"',
      "",
  ]
  return "\n".join(lines)


def _define_flags():
  flags.DEFINE_integer("nodes", 1, "Nodes to allocate.")
  flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
  flags.DEFINE_enum("procs", "node", PROCS, "One JAX process per node or per GPU.")
  flags.DEFINE_string("config", "configs/433m.py", "Config path inside the repo.")
  flags.DEFINE_string("workdir", None, "Shared (or gs://) directory for checkpoints.",
                      required=True)
  flags.DEFINE_string("job_name", "dirroute", "SLURM job name.")
  flags.DEFINE_string("partition", None, "SLURM partition.")
  flags.DEFINE_string("account", None, "SLURM account.")
  flags.DEFINE_string("time", "24:00:00", "Wall-clock limit; a requeued job resumes.")
  flags.DEFINE_integer("cpus_per_node", None, "CPUs per node (split over its tasks).")
  flags.DEFINE_string("repo_dir", REPO, "This repository as the nodes see it.")
  flags.DEFINE_string("venv", os.path.join(REPO, ".venv"), "Virtualenv to activate ('' none).")
  flags.DEFINE_string("script", "dirroute.sbatch", "Where the script is written.")
  flags.DEFINE_bool("check_gpu", True, "The script stops unless jax sees the GPUs.")
  flags.DEFINE_bool("dry_run", False, "Print the script; write and submit nothing.")


def main(argv):
  f = flags.FLAGS
  job = SlurmJob(nodes=f.nodes, gpus_per_node=f.gpus_per_node, procs=f.procs, config=f.config,
                 workdir=f.workdir, job_name=f.job_name, partition=f.partition,
                 account=f.account, time=f.time, cpus_per_node=f.cpus_per_node,
                 repo_dir=f.repo_dir, venv=f.venv or None, check_gpu=f.check_gpu,
                 train_args=tuple(argv[1:]))
  try:
    script = sbatch_script(job)
  except ValueError as e:
    fail(str(e))
  if f.dry_run:
    print(script, end="")
    return
  with open(f.script, "w") as out:
    out.write(script)
  print(f"Wrote {f.script}; submitting.")
  sys.exit(subprocess.run(["sbatch", f.script], check=False).returncode)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
