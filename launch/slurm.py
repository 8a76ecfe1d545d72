"""Writes (and submits) the sbatch script that trains on a SLURM GPU cluster.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --config=configs/433m.py \
      --workdir=/shared/runs/433m --partition=gpu --dry_run \
      -- --config.data.files='/shared/fineweb/sample-10BT/*.parquet'

`--dry_run` prints the script; without it the script is written to --script and passed to
`sbatch`. Everything after `--` goes to launch/train.py unchanged, and is checked here first.
--procs=node runs one JAX process per node, --procs=gpu one per GPU. A job preempted or at its
time limit saves and requeues itself; any other failure is left failed. A --venv that does not
exist yet is created here first, before submitting: --python (default python3.12) and
`pip install -e '.[cuda]'`. What the script does: dirroute_jax/cloud/slurm.py.
"""

import os
import shlex
import subprocess
import sys

from absl import app, flags

from dirroute_jax.cli import fail, parse_flags
from dirroute_jax.cloud import REPO, slurm


def _define_flags():
  flags.DEFINE_integer("nodes", 1, "Nodes to allocate.")
  flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
  flags.DEFINE_enum("procs", "node", slurm.PROCS, "One JAX process per node or per GPU.")
  flags.DEFINE_string("config", "configs/433m.py", "Config path inside the repo.")
  flags.DEFINE_string(
    "workdir", None, "Shared (or gs://) directory for checkpoints.", required=True
  )
  flags.DEFINE_string("job_name", "dirroute", "SLURM job name.")
  flags.DEFINE_string("partition", None, "SLURM partition.")
  flags.DEFINE_string("account", None, "SLURM account.")
  flags.DEFINE_string("time", "24:00:00", "Wall-clock limit; a requeued job resumes.")
  flags.DEFINE_integer("cpus_per_node", None, "CPUs per node (split over its tasks).")
  flags.DEFINE_string("repo_dir", REPO, "This repository as the nodes see it.")
  flags.DEFINE_string(
    "venv",
    os.path.join(REPO, ".venv"),
    "Virtualenv to activate ('' none); "
    "created first if missing, with --python and pip install -e '.[cuda]'.",
  )
  flags.DEFINE_string(
    "python",
    "python3.12",
    "Python that creates a missing --venv (the newest jax needs >= 3.12; 3.11 gets jax 0.10.2).",
  )
  flags.DEFINE_string("script", "dirroute.sbatch", "Where the script is written.")
  flags.DEFINE_bool("check_gpu", True, "The script stops unless jax sees the GPUs.")
  flags.DEFINE_bool("dry_run", False, "Print the script; write and submit nothing.")


def main(argv):
  f = flags.FLAGS
  job = slurm.SlurmJob(
    nodes=f.nodes,
    gpus_per_node=f.gpus_per_node,
    procs=f.procs,
    config=f.config,
    workdir=f.workdir,
    job_name=f.job_name,
    partition=f.partition,
    account=f.account,
    time=f.time,
    cpus_per_node=f.cpus_per_node,
    repo_dir=f.repo_dir,
    venv=f.venv or None,
    venv_python=f.python,
    check_gpu=f.check_gpu,
    train_args=tuple(argv[1:]),
  )
  try:
    script = slurm.sbatch_script(job)
  except ValueError as e:
    fail(str(e))
  setup = slurm.venv_commands(job)
  if f.dry_run:
    for cmd in setup:
      print(f"# first, {job.venv} missing: {shlex.join(cmd)}", file=sys.stderr)
    print(script, end="")
    return
  for cmd in setup:
    print(f"+ {shlex.join(cmd)}", flush=True)
    try:
      subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
      fail(
        f"creating the venv {job.venv} failed ({e}); give a Python >= 3.12 with --python, "
        "or an existing venv with --venv."
      )
  with open(f.script, "w") as out:
    out.write(script)
  print(f"Wrote {f.script}; submitting.")
  sys.exit(subprocess.run(["sbatch", f.script], check=False).returncode)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
