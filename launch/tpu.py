"""Trains on a Cloud TPU slice: queued resource -> install -> train on all workers -> delete.

  python launch/tpu.py --name=dirroute-433m --zone=us-central2-b --accelerator_type=v4-8 \
      --config=configs/433m.py --workdir=gs://BUCKET/dirroute/433m \
      --stage_data=gs://BUCKET/fineweb/sample-10BT --dry_run \
      -- --config.data.files='~/data/*.parquet'

Everything after `--` goes to launch/train.py unchanged, and is checked here first. A preempted
slice is deleted and requested again, and training resumes from the newest checkpoint in the
gs:// workdir; any other failure ends the job. The slice is deleted at the end, also on errors
and Ctrl-C (unless --keep). How it works: dirroute_jax/cloud/tpu.py.

`--dry_run` (before `--`; after it is an error) prints every command in order and runs nothing.
"""

import shlex
import sys

from absl import app, flags

from dirroute_jax.cli import fail, parse_flags
from dirroute_jax.cloud import tpu


def _define_flags():
  flags.DEFINE_string("name", None, "Queued resource and TPU node name.", required=True)
  flags.DEFINE_string("zone", None, "e.g. us-central2-b (v4), us-west4-a (v5e).", required=True)
  flags.DEFINE_string(
    "accelerator_type", None, "v4-8, v5e-16 (= v5litepod-16), v5p-8, ...", required=True
  )
  flags.DEFINE_string("config", "configs/433m.py", "Config path inside the repo.")
  flags.DEFINE_string(
    "workdir", None, "gs://BUCKET/path for checkpoints and metrics.", required=True
  )
  flags.DEFINE_string("project", None, "GCP project (default: gcloud's).")
  flags.DEFINE_string(
    "runtime_version",
    None,
    "TPU VM image; default tpu-ubuntu2204-base (v4), v2-alpha-tpuv5-lite "
    "(v5e), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e).",
  )
  flags.DEFINE_integer(
    "num_slices",
    1,
    "Slices of --accelerator_type joined over the "
    "data-center network (a multi-slice queued resource: --node-count); the "
    "batch is split over them (mesh.dcn_data), the parameters are not.",
  )
  flags.DEFINE_bool("spot", False, "Spot capacity: cheaper, preemptible (the run resumes).")
  flags.DEFINE_string("repo", None, "git URL to clone on the workers; default: copy this checkout.")
  flags.DEFINE_string("ref", "main", "Branch or tag of --repo.")
  flags.DEFINE_string(
    "stage_data",
    None,
    f"gs:// folder copied to {tpu.REMOTE_DATA} on every worker (data.files "
    f"is a local glob): then pass -- "
    f"--config.data.files='{tpu.REMOTE_DATA}/*.parquet'.",
  )
  flags.DEFINE_integer("max_restarts", 10, "Slice recreations before giving up.")
  flags.DEFINE_integer("poll_seconds", 60, "Queued-resource polling interval.")
  flags.DEFINE_bool("keep", False, "Leave the slice up at the end (you pay for it).")
  flags.DEFINE_bool("dry_run", False, "Print the commands in order; run nothing.")


def main(argv):
  f = flags.FLAGS
  job = tpu.TpuJob(
    name=f.name,
    zone=f.zone,
    accelerator_type=f.accelerator_type,
    config=f.config,
    workdir=f.workdir,
    project=f.project,
    runtime_version=f.runtime_version,
    spot=f.spot,
    repo=f.repo,
    ref=f.ref,
    stage_data=f.stage_data,
    num_slices=f.num_slices,
    train_args=tuple(argv[1:]),
  )
  try:
    steps = tpu.plan(job)
  except ValueError as e:
    fail(str(e))
  if f.dry_run:
    s = job.slice
    print(
      f"# {s.accelerator_type}: {s.chips} chips on {s.hosts} host(s)"
      + (f", x {job.num_slices} slices" if job.num_slices > 1 else "")
    )
    for what, cmd in steps:
      print(f"# {what}\n{shlex.join(cmd)}")
    return
  sys.exit(tpu.run(job, max_restarts=f.max_restarts, poll_seconds=f.poll_seconds, keep=f.keep))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
