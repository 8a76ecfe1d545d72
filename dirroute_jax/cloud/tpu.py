"""Cloud TPU slices: queued resource -> install -> train on all workers -> delete.

The command line is launch/tpu.py. The slice is requested as a queued resource, so the request
waits for capacity instead of failing. When it is ACTIVE the project is installed on every
worker (a tarball of this checkout, or `TpuJob.repo` cloned), then launch/train.py runs on all
workers at once (`--worker=all`; a multi-host slice gets `--distributed=on`, JAX finds the other
workers by itself) and its output streams to the caller. If the run dies (spot preemption: the
queued resource goes SUSPENDED / FAILED, or ssh breaks) the slice is deleted, requested again and
the same command reruns: training resumes from the newest checkpoint in the gs:// workdir. Only
a run that was preempted is rerun: launch/train.py exiting PREEMPTED (75: it got SIGTERM and
saved), or dying while the slice is no longer ACTIVE. An ssh connection that drops (status 255)
while the slice stays ACTIVE is reconnected: the same command runs again on the same slice, and
waits for the lease if the earlier run is still training there. Any other status (a bad flag, a
divergence, a full disk, a bug; dirroute_jax/exit_codes.py) would repeat itself and ends the
job. The flags for launch/train.py are checked first, with its own definitions and the config
loaded, before anything is rented. The slice is deleted at the end, also on errors and Ctrl-C
(unless `keep`).

`plan(job)` is a pure function giving every command in order (what --dry_run prints);
`run(job)` is the thin loop that executes them (tests/test_launchers.py).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import time

from dirroute_jax import exit_codes
from dirroute_jax.cli import check_train_args
from dirroute_jax.cloud import REPO
from dirroute_jax.train.lock import STALE_SECS

REMOTE_DIR = "~/dirroute-jax"
REMOTE_VENV = "~/dirroute-venv"
REMOTE_LOG = "~/dirroute-train.log"
REMOTE_DATA = "~/data"  # --stage_data lands here: --config.data.files='~/data/*.parquet'
ACTIVE = "ACTIVE"
DEAD_STATES = ("SUSPENDING", "SUSPENDED", "FAILED")  # preempted or never coming: recreate

# Per generation: gcloud's name prefix, chips per "N" in the type name, chips per host, the
# runtime image (Ubuntu 22.04 + TPU driver), and where the chips usually are.
_GENERATIONS = {
  "v4": dict(
    prefix="v4",
    cores_per_chip=2,
    chips_per_host=4,
    runtime="tpu-ubuntu2204-base",
    zone="us-central2-b",
  ),
  "v5e": dict(
    prefix="v5litepod",
    cores_per_chip=1,
    chips_per_host=4,
    runtime="v2-alpha-tpuv5-lite",
    zone="us-west4-a",
  ),
  "v5p": dict(
    prefix="v5p", cores_per_chip=2, chips_per_host=4, runtime="v2-alpha-tpuv5", zone="us-east5-a"
  ),
  "v6e": dict(
    prefix="v6e", cores_per_chip=1, chips_per_host=4, runtime="v2-alpha-tpuv6e", zone="us-east5-b"
  ),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str  # as gcloud spells it, e.g. v5litepod-16
  generation: str
  chips: int
  hosts: int
  runtime_version: str
  zone: str  # a zone that offers this generation (a suggestion, not a default)


def slice_info(accelerator_type: str) -> Slice:
  """'v4-8' (4 chips, 1 host), 'v5e-16' = 'v5litepod-16' (16 chips, 4 hosts), 'v5p-32', ..."""
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type.strip().lower())
  gen = _ALIASES.get(m.group(1), m.group(1)) if m else None
  if gen not in _GENERATIONS:
    raise ValueError(
      f"accelerator type {accelerator_type!r} is unknown; use e.g. v4-8, "
      f"v5e-16 (= v5litepod-16), v5p-8, v6e-8 ({', '.join(_GENERATIONS)})."
    )
  g, n = _GENERATIONS[gen], int(m.group(2))
  chips = n // g["cores_per_chip"]
  # Single-host v5e/v6e machines hold up to 8 chips; everything larger is 4 chips per host.
  hosts = 1 if chips <= (8 if g["cores_per_chip"] == 1 else 4) else chips // g["chips_per_host"]
  return Slice(f"{g['prefix']}-{n}", gen, chips, hosts, g["runtime"], g["zone"])


@dataclasses.dataclass(frozen=True)
class TpuJob:
  """What to run where. `config` is a path inside the repo, as launch/train.py takes it."""

  name: str
  zone: str
  accelerator_type: str
  config: str
  workdir: str
  project: str | None = None
  runtime_version: str | None = None  # default: the generation's (see _GENERATIONS)
  spot: bool = False
  repo: str | None = None  # git URL cloned on every worker; None: copy this checkout
  ref: str = "main"
  source: str = REPO
  train_args: tuple[str, ...] = ()
  stage_data: str | None = None  # gs:// folder synced to REMOTE_DATA on every worker
  num_slices: int = 1  # >1: a multi-slice queued resource (slices joined over the DCN)
  python: str = "3.12"  # the workers' Python: the newest jax needs >= 3.12 (README)
  extras: str = "tpu,gcs"  # pyproject's jax[tpu] (+ the matching libtpu) and gcsfs for gs://

  @property
  def slice(self) -> Slice:
    return slice_info(self.accelerator_type)

  @property
  def tarball(self) -> str:
    return f"/tmp/{self.name}-dirroute-jax.tgz"


def check_job(job: TpuJob) -> None:
  """Fails before anything is rented: the launcher's flags, and launch/train.py's after `--`
  (parsed with its own flag definitions, the config loaded and validated)."""
  job.slice  # pylint: disable=pointless-statement  # validates the accelerator type  # noqa: B018
  if job.num_slices < 1:
    raise ValueError(f"--num_slices={job.num_slices}: give 1 (one slice) or more.")
  if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job.name):
    raise ValueError(
      f"--name={job.name!r}: lower-case letters, digits and '-', starting with "
      "a letter (a GCE resource name)."
    )
  if not job.workdir.startswith("gs://"):
    raise ValueError(
      f"--workdir={job.workdir!r} must be a gs:// path: every worker writes its "
      "part of each checkpoint there, and it must outlive a preempted slice."
    )
  if job.stage_data and not job.stage_data.startswith("gs://"):
    raise ValueError(f"--stage_data={job.stage_data!r} must be a gs:// folder.")
  check_train_args(job.config, job.workdir, job.train_args, job.source)


def _gcloud(job: TpuJob, *args: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", *args, f"--zone={job.zone}"]
  return cmd + ([f"--project={job.project}"] if job.project else [])


def create_command(job: TpuJob) -> list[str]:
  s = job.slice
  if job.num_slices > 1:  # nodes NAME-0, NAME-1, ...; the runtime sets the slices' DCN env
    nodes = [f"--node-count={job.num_slices}", f"--node-prefix={job.name}"]
  else:
    nodes = [f"--node-id={job.name}"]
  cmd = _gcloud(job, "queued-resources", "create", job.name, *nodes)
  cmd += [
    f"--accelerator-type={s.accelerator_type}",
    f"--runtime-version={job.runtime_version or s.runtime_version}",
  ]
  return cmd + (["--spot"] if job.spot else [])


def state_command(job: TpuJob) -> list[str]:
  return _gcloud(job, "queued-resources", "describe", job.name, "--format=value(state.state)")


def delete_command(job: TpuJob) -> list[str]:
  # --force also deletes the TPU VM the queued resource created; --quiet skips the prompt.
  return _gcloud(job, "queued-resources", "delete", job.name, "--force", "--quiet")


def ssh_command(job: TpuJob, remote: str) -> list[str]:
  if job.num_slices > 1:  # every worker of every slice at once
    return _gcloud(
      job, "queued-resources", "ssh", job.name, "--node=all", "--worker=all", f"--command={remote}"
    )
  return _gcloud(job, "tpu-vm", "ssh", job.name, "--worker=all", f"--command={remote}")


def copy_commands(job: TpuJob) -> list[list[str]]:
  """The code onto every worker: this checkout as a tarball (no venv, git or workdirs)."""
  if job.repo:
    return []
  tar = [
    "tar",
    "-czf",
    job.tarball,
    "--exclude=./.venv",
    "--exclude=./.git",
    "--exclude=./workdirs",
    "--exclude=__pycache__",
    "-C",
    job.source,
    ".",
  ]
  if job.num_slices > 1:
    scp = _gcloud(
      job,
      "queued-resources",
      "scp",
      job.tarball,
      f"{job.name}:{REMOTE_DIR}.tgz",
      "--node=all",
      "--worker=all",
    )
  else:
    scp = _gcloud(job, "tpu-vm", "scp", job.tarball, f"{job.name}:{REMOTE_DIR}.tgz", "--worker=all")
  return [tar, scp]


def setup_script(job: TpuJob) -> str:
  """Runs on every worker: the code, a venv on Python `job.python` and the project with its
  `tpu` extra (jax[tpu] in pyproject's range, libtpu pinned by jax). The TPU images ship
  Python 3.10 (Ubuntu 22.04): an existing python3.12 is used, else uv (installed with the
  image's pip) downloads a standalone CPython 3.12 into the user's home; no apt, no PPA."""
  py = f"python{job.python}"
  if job.repo:
    code = (
      f"rm -rf {REMOTE_DIR} && git clone --depth=1 --branch={shlex.quote(job.ref)} "
      f"{shlex.quote(job.repo)} {REMOTE_DIR}"
    )
  else:
    code = (
      f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf {REMOTE_DIR}.tgz -C {REMOTE_DIR}"
    )
  steps = [
    "set -e",
    code,
    f"rm -rf {REMOTE_VENV}",
    f"({py} -m venv {REMOTE_VENV} 2>/dev/null || (rm -rf {REMOTE_VENV}; "
    "(python3 -m pip install -q --user -U uv || curl -LsSf https://astral.sh/uv/install.sh "
    f"| sh) && ~/.local/bin/uv venv -q --seed --python={job.python} {REMOTE_VENV}))",
    f"{REMOTE_VENV}/bin/pip install -q -U pip",
    f"cd {REMOTE_DIR} && {REMOTE_VENV}/bin/pip install -q -e {shlex.quote(f'.[{job.extras}]')}",
  ]
  if job.stage_data:  # data.files is read with a local glob: every worker needs its own copy
    steps += [
      f"mkdir -p {REMOTE_DATA}",
      f"gcloud storage rsync --recursive {shlex.quote(job.stage_data)} {REMOTE_DATA}",
    ]
  return " && ".join(steps)


def train_script(job: TpuJob) -> str:
  """Runs on every worker at once; worker 0 prints the progress, all append to REMOTE_LOG."""
  args = [f"--config={job.config}", f"--workdir={job.workdir}"]
  if job.slice.hosts > 1 or job.num_slices > 1:
    # JAX reads the worker list (and, across slices, the DCN coordinator the multi-slice
    # runtime sets) from the TPU metadata; the mesh's dcn_data axis spans the slices.
    args.append("--distributed=on")
  args += list(job.train_args)
  train = " ".join(shlex.quote(a) for a in ["launch/train.py", *args])
  return (
    f"set -o pipefail; cd {REMOTE_DIR} && {REMOTE_VENV}/bin/python {train} 2>&1 "
    f"| tee -a {REMOTE_LOG}"
  )


def plan(job: TpuJob) -> list[tuple[str, list[str]]]:
  """Every command of a run without preemptions, in order, as (what, argv)."""
  check_job(job)
  return (
    [
      ("request the slice", create_command(job)),
      ("poll until the state is ACTIVE", state_command(job)),
    ]
    + [("copy this checkout", c) for c in copy_commands(job)]
    + [
      ("install on all workers", ssh_command(job, setup_script(job))),
      ("train on all workers", ssh_command(job, train_script(job))),
      ("delete the slice", delete_command(job)),
    ]
  )


class Preempted(RuntimeError):
  """The queued resource died (or never came up); it is deleted and requested again."""


def _run(cmd, check=True, capture=False):
  out = subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE if capture else None)
  if check and out.returncode:
    raise subprocess.CalledProcessError(out.returncode, cmd)
  return out


def state(job: TpuJob, execute=_run) -> str | None:
  """The queued resource's state, or None if it does not exist."""
  out = execute(state_command(job), check=False, capture=True)
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def wait_active(job: TpuJob, poll_seconds: float, execute=_run, sleep=time.sleep, log=print):
  last = None
  while (current := state(job, execute)) != ACTIVE:
    if current != last:
      log(f"[tpu] {job.name}: {current}")
      last = current
    if current in DEAD_STATES or current is None:
      raise Preempted(f"queued resource {job.name} is {current}")
    sleep(poll_seconds)
  log(f"[tpu] {job.name}: ACTIVE")


SSH_LOST = 255  # ssh's own status: the connection dropped (or the slice went away under it)
# Statuses train.py reports itself after looking at its input or its losses: a new slice would
# see the same, whatever state the slice is in now (a failed `describe` must not rerun them).
_FINAL = (exit_codes.USAGE, exit_codes.DIVERGED)


def slice_state(
  job: TpuJob, execute=_run, sleep=time.sleep, tries: int = 3, pause: float = 5.0
) -> str | None:
  """`state(job)`, asked again when it says nothing: one failed `describe` (gcloud's own
  hiccup) must not make a live slice look deleted."""
  for i in range(tries):
    current = state(job, execute)
    if current is not None or i == tries - 1:
      return current
    sleep(pause)
  return None


def _train_once(job: TpuJob, execute, log) -> tuple[int, bool]:
  """Runs the training command; (its status, whether Ctrl-C was pressed meanwhile). The first
  Ctrl-C reaches the workers through ssh (train.py saves and stops); a second one aborts."""
  import signal  # pylint: disable=g-import-not-at-top

  pressed = []

  def on_sigint(signum, frame):
    if pressed:
      raise KeyboardInterrupt
    pressed.append(True)
    log(
      "[tpu] Ctrl-C: training saves and stops (Ctrl-C again to abort; the slice is "
      "deleted either way)."
    )

  try:
    previous = signal.signal(signal.SIGINT, on_sigint)
  except ValueError:  # not the main thread
    previous = None
  try:
    rc = execute(ssh_command(job, train_script(job)), check=False).returncode
  finally:
    if previous is not None:
      signal.signal(signal.SIGINT, previous)
  return rc, bool(pressed)


def run(
  job: TpuJob,
  *,
  max_restarts: int = 10,
  poll_seconds: float = 60,
  keep: bool = False,
  execute=_run,
  sleep=time.sleep,
  log=print,
) -> int:
  """Runs `plan(job)`, recreating the slice after a preemption and reconnecting after a
  dropped connection; returns the exit status (exit_codes.LAUNCHER_ACTION)."""
  check_job(job)
  restarts = 0
  installed = False  # the code is on the current slice's workers
  resumable = False  # the last attempt was preempted or lost its connection
  try:
    while True:
      try:
        current = state(job, execute)
        if current in DEAD_STATES:
          execute(delete_command(job))
          current = None
        if current is None:
          execute(create_command(job))
          installed = False
        wait_active(job, poll_seconds, execute, sleep, log)
        if not installed:
          for cmd in copy_commands(job):
            execute(cmd)
          execute(ssh_command(job, setup_script(job)))
          installed = True
        rc, interrupted = _train_once(job, execute, log)
        if interrupted:
          log(
            f"[tpu] stopped by Ctrl-C (training exited {exit_codes.describe(rc)}); the "
            f"checkpoint in {job.workdir} is intact: rerun this command to resume."
          )
          return rc
        if rc == exit_codes.DONE:
          log(f"[tpu] training finished; checkpoints and metrics in {job.workdir}")
          return 0
        if rc in exit_codes.RERUN_AFTER_PREEMPTION and resumable:
          # The run before this one vanished without releasing its lease (a slice gone
          # without SIGTERM), or still trains after our connection to it dropped: its lease
          # goes stale STALE_SECS after its last heartbeat, or is released when it ends.
          log(
            f"[tpu] the previous run's lease on {job.workdir} is still held (a vanished "
            f"slice's, or the run still training after a dropped connection); waiting "
            f"{STALE_SECS:.0f} s, then trying again on the same slice."
          )
          sleep(STALE_SECS)
          continue
        if rc in _FINAL:
          slice_now = ACTIVE  # reported by train.py itself: the slice does not matter
        else:
          slice_now = slice_state(job, execute, sleep)
        if rc == SSH_LOST and slice_now == ACTIVE:
          restarts += 1
          resumable = True
          if restarts > max_restarts:
            raise Preempted("ssh connection dropped too often")
          log(
            f"[tpu] the ssh connection dropped (status {SSH_LOST}) but {job.name} is "
            f"ACTIVE: reconnecting (attempt {restarts}/{max_restarts}); training resumes "
            "from the latest checkpoint, or is waited for if it still runs."
          )
          continue
        if rc not in exit_codes.RERUN and slice_now == ACTIVE:
          why = {
            exit_codes.USAGE: "rejected its flags or config",
            exit_codes.DIVERGED: "diverged (non-finite loss or state)",
            exit_codes.IO_ERROR: "could not read or write the workdir",
            exit_codes.BUSY: "found another run writing to the workdir",
            exit_codes.ABORTED: "was aborted (a second Ctrl-C on a worker)",
          }.get(rc, "failed (see its output above)")
          log(
            f"[tpu] launch/train.py {why}: exit status {exit_codes.describe(rc)} on a live "
            "slice; a rerun would fail the same way, so not retrying."
          )
          return rc
        raise Preempted(
          f"training exited with status {exit_codes.describe(rc)} (slice state {slice_now})"
        )
      except (Preempted, subprocess.CalledProcessError) as e:
        restarts += 1
        resumable = True
        installed = False
        if restarts > max_restarts:
          log(
            f"[tpu] {e}; giving up after {max_restarts} restarts (the checkpoint in "
            f"{job.workdir} is intact: rerun this command to go on)."
          )
          return exit_codes.PREEMPTED
        log(
          f"[tpu] {e}; deleting and recreating the slice (restart {restarts}/"
          f"{max_restarts}); training resumes from the latest checkpoint."
        )
        execute(delete_command(job), check=False)
  except KeyboardInterrupt:
    log(f"[tpu] aborted by Ctrl-C; the last complete checkpoint in {job.workdir} is intact.")
    return exit_codes.ABORTED
  finally:
    if not keep:
      log(f"[tpu] deleting {job.name}")
      execute(delete_command(job), check=False)
