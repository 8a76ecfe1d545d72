"""Cloud launchers without a cloud: the TPU command sequence, the preemption loop against a
fake gcloud, and the SLURM script run by bash against fake `srun` / `scontrol`."""

import os
import subprocess
import sys
import types

import pytest

from dirroute_jax import exit_codes
from dirroute_jax.cloud import slurm, tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKDIR = "gs://bucket/dirroute/433m"


DATA = ("--config.data.files=~/data/*.parquet",)  # configs/433m.py trains on files


def _job(accelerator_type, **kw):
  return tpu.TpuJob(
    name="dirroute-test",
    zone="us-central2-b",
    accelerator_type=accelerator_type,
    config="configs/433m.py",
    workdir=WORKDIR,
    **{"train_args": DATA, **kw},
  )


def _remote(cmd):
  return next(a[len("--command=") :] for a in cmd if a.startswith("--command="))


@pytest.mark.parametrize(
  "accel, gcloud_type, runtime, chips, hosts",
  [
    ("v4-8", "v4-8", "tpu-ubuntu2204-base", 4, 1),
    ("v4-32", "v4-32", "tpu-ubuntu2204-base", 16, 4),
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite", 16, 4),
    ("v5litepod-8", "v5litepod-8", "v2-alpha-tpuv5-lite", 8, 1),
    ("v5p-8", "v5p-8", "v2-alpha-tpuv5", 4, 1),
  ],
)
def test_slice_info(accel, gcloud_type, runtime, chips, hosts):
  s = tpu.slice_info(accel)
  assert (s.accelerator_type, s.runtime_version, s.chips, s.hosts) == (
    gcloud_type,
    runtime,
    chips,
    hosts,
  )


def test_v4_8_plan():
  steps = tpu.plan(_job("v4-8", train_args=("--config.steps=100", *DATA)))
  cmds = [c for _, c in steps]
  create = cmds[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "dirroute-test"]
  for arg in (
    "--node-id=dirroute-test",
    "--zone=us-central2-b",
    "--accelerator-type=v4-8",
    "--runtime-version=tpu-ubuntu2204-base",
  ):
    assert arg in create
  assert "--spot" not in create
  assert "describe" in cmds[1] and "--format=value(state.state)" in cmds[1]
  ssh = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
  assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
  setup, train = map(_remote, ssh)
  # Python 3.12 for the newest jax: the image's if it has one, else uv's standalone build (the
  # TPU images ship 3.10); then the project's tpu extra (jax[tpu] and its libtpu) and gcsfs.
  assert "(python3.12 -m venv ~/dirroute-venv 2>/dev/null || (" in setup
  assert "uv venv -q --seed --python=3.12 ~/dirroute-venv" in setup
  assert "cd ~/dirroute-jax && ~/dirroute-venv/bin/pip install -q -e '.[tpu,gcs]'" in setup
  assert "apt-get" not in setup and "python3.11" not in setup
  assert (
    "launch/train.py --config=configs/433m.py --workdir=gs://bucket/dirroute/433m "
    "--config.steps=100"
  ) in train
  assert "--distributed" not in train  # one host: nothing to coordinate
  assert cmds[-1][3:6] == ["queued-resources", "delete", "dirroute-test"]
  assert "--force" in cmds[-1] and "--quiet" in cmds[-1]
  assert [c[4] for c in cmds if c[0] == "gcloud"].count("delete") == 1


def test_v5e_16_plan_is_multi_host():
  steps = tpu.plan(
    _job(
      "v5e-16",
      spot=True,
      project="my-proj",
      repo="https://example.com/dirroute-jax.git",
      stage_data="gs://bucket/fineweb",
    )
  )
  cmds = [c for _, c in steps]
  assert "--accelerator-type=v5litepod-16" in cmds[0]
  assert "--runtime-version=v2-alpha-tpuv5-lite" in cmds[0] and "--spot" in cmds[0]
  assert all("--project=my-proj" in c for c in cmds)
  assert not any(c[0] == "tar" for c in cmds)  # --repo: cloned, nothing copied
  setup, train = (_remote(c) for c in cmds if c[3:5] == ["tpu-vm", "ssh"])
  assert "git clone --depth=1 --branch=main https://example.com/dirroute-jax.git" in setup
  assert setup.endswith("gcloud storage rsync --recursive gs://bucket/fineweb ~/data")
  assert "--workdir=gs://bucket/dirroute/433m --distributed=on" in train


def test_plan_rejects_local_workdir_and_unknown_types():
  with pytest.raises(ValueError, match="gs://"):
    tpu.plan(tpu.TpuJob("x", "z", "v4-8", "configs/433m.py", "/tmp/run"))
  with pytest.raises(ValueError, match="unknown"):
    tpu.plan(_job("v9-8"))


class FakeGcloud:
  """Replays queued-resource states (the last one sticks) and training exit codes; records
  every command."""

  def __init__(self, states, train_codes):
    self.states, self.train_codes, self.calls = list(states), list(train_codes), []

  def __call__(self, cmd, check=True, capture=False):
    self.calls.append(cmd)
    if "describe" in cmd:
      s = self.states.pop(0) if len(self.states) > 1 else self.states[0]
      return types.SimpleNamespace(returncode=0 if s else 1, stdout=s or "")
    if cmd[0] == "gcloud" and "--command=" in " ".join(cmd) and "launch/train.py" in _remote(cmd):
      return types.SimpleNamespace(returncode=self.train_codes.pop(0), stdout="")
    return types.SimpleNamespace(returncode=0, stdout="")

  def verbs(self):
    out = []
    for c in self.calls:
      if c[0] == "tar":
        out.append("tar")
      elif c[3] == "queued-resources":
        out.append(c[4])
      else:
        out.append("train" if c[4] == "ssh" and "launch/train.py" in _remote(c) else c[4])
    return out


def test_run_recreates_the_slice_after_preemption():
  # Not there -> provisioning -> ACTIVE; training dies (preempted: SUSPENDED); deleted, requested
  # again, ACTIVE, training finishes.
  fake = FakeGcloud(
    [None, "PROVISIONING", "ACTIVE", "SUSPENDED", None, "WAITING_FOR_RESOURCES", "ACTIVE"], [255, 0]
  )
  rc = tpu.run(
    _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=lambda *a: None
  )
  assert rc == 0
  assert fake.verbs() == [
    "describe",
    "create",
    "describe",
    "describe",  # first slice
    "tar",
    "scp",
    "ssh",
    "train",
    "describe",
    "delete",  # preempted
    "describe",
    "create",
    "describe",
    "describe",  # second slice
    "tar",
    "scp",
    "ssh",
    "train",
    "delete",
  ]


@pytest.mark.parametrize(
  "code, says",
  [
    (exit_codes.USAGE, "rejected its flags"),
    (exit_codes.DIVERGED, "diverged"),
    (exit_codes.IO_ERROR, "could not read or write"),
    (exit_codes.BUSY, "another run"),
    (exit_codes.CRASH, "failed"),
  ],
)
def test_run_stops_on_any_status_but_preempted_and_still_deletes(code, says):
  # A typo, a NaN or a bug repeats on a new slice: one slice, no retry, a true reason.
  fake, logged = FakeGcloud([None, "ACTIVE"], [code]), []
  rc = tpu.run(_job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=logged.append)
  assert rc == code
  assert fake.verbs()[-1] == "delete" and fake.verbs().count("create") == 1
  assert any(says in line for line in logged), logged


def test_run_reruns_on_preempted_status_on_a_live_slice():
  fake = FakeGcloud([None, "ACTIVE"], [exit_codes.PREEMPTED, 0])
  rc = tpu.run(
    _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=lambda *a: None
  )
  assert rc == 0 and fake.verbs().count("train") == 2


def test_run_waits_out_the_lease_of_a_vanished_slice():
  # Preempted without SIGTERM (255, slice gone): the rerun finds the old lease still fresh
  # (BUSY), waits for it to go stale and tries again, instead of giving up.
  fake, slept = (
    FakeGcloud([None, "ACTIVE", "FAILED", None, "ACTIVE"], [255, exit_codes.BUSY, 0]),
    [],
  )
  rc = tpu.run(_job("v4-8"), poll_seconds=0, execute=fake, sleep=slept.append, log=lambda *a: None)
  assert rc == 0 and fake.verbs().count("train") == 3 and tpu.STALE_SECS in slept


def test_run_gives_up_after_max_restarts():
  fake = FakeGcloud([None, "ACTIVE"], [exit_codes.PREEMPTED] * 3)
  rc = tpu.run(
    _job("v4-8"),
    max_restarts=2,
    poll_seconds=0,
    execute=fake,
    sleep=lambda s: None,
    log=lambda *a: None,
  )
  assert rc == exit_codes.PREEMPTED
  assert fake.verbs().count("train") == 3 and fake.verbs()[-1] == "delete"


def test_tpu_dry_run_cli_prints_commands_in_order():
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "tpu.py"),
      "--name=dirroute-test",
      "--zone=us-west4-a",
      "--accelerator_type=v5e-16",
      f"--workdir={WORKDIR}",
      "--dry_run",
      "--",
      "--config.steps=100",
      *DATA,
    ],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  lines = [l for l in out.splitlines() if not l.startswith("#")]
  assert out.startswith("# v5litepod-16: 16 chips on 4 host(s)")
  kinds = [" ".join(l.split()[3:5]) if l.startswith("gcloud") else l.split()[0] for l in lines]
  assert kinds == [
    "queued-resources create",
    "queued-resources describe",
    "tar",
    "tpu-vm scp",
    "tpu-vm ssh",
    "tpu-vm ssh",
    "queued-resources delete",
  ]
  assert "--distributed=on --config.steps=100" in lines[5]


@pytest.mark.parametrize(
  "after, says",
  [
    (("--dry_run",), "--dry_run after `--`"),
    (("--config.stepz=3",), "stepz"),
    (("--config.model.pooling=mean",), "model.pooling"),
    (("--no_such_flag",), "no_such_flag"),
    ((), "data.files"),  # configs/433m.py needs its data
  ],
)
def test_tpu_checks_the_flags_after_dashdash_before_renting(tmp_path, after, says):
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/calls\n")
  os.chmod(gcloud, 0o755)
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "tpu.py"),
      "--name=dirroute-test",
      "--zone=us-west4-a",
      "--accelerator_type=v4-8",
      f"--workdir={WORKDIR}",
      "--poll_seconds=0",
      "--max_restarts=0",
      "--",
      *after,
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
  )
  assert proc.returncode == exit_codes.USAGE, proc.stderr
  assert says in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "calls").exists()  # nothing rented


# --- SLURM -----------------------------------------------------------------------------------


def _slurm_job(**kw):
  return slurm.SlurmJob(
    **{
      **dict(
        nodes=2,
        gpus_per_node=8,
        config="configs/433m.py",
        workdir="/shared/runs/433m",
        train_args=DATA,
      ),
      **kw,
    }
  )


def test_sbatch_script_one_process_per_node():
  script = slurm.sbatch_script(_slurm_job(partition="gpu", train_args=("--config.steps=9", *DATA)))
  for line in (
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --partition=gpu",
    "#SBATCH --requeue",
  ):
    assert line in script.splitlines()
  assert "scontrol show hostnames \"$SLURM_JOB_NODELIST\" | sed -n 1p" in script
  assert "--local_device_ids=0,1,2,3,4,5,6,7" in script
  assert "--process_id=\"$SLURM_PROCID\"" in script
  assert (
    "TRAIN_ARGS=(--config=configs/433m.py --workdir=/shared/runs/433m --config.steps=9 "
    "'--config.data.files=~/data/*.parquet')"
  ) in script
  subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_a_missing_venv_is_created_with_python_3_12_and_cuda_jax(tmp_path):
  job = _slurm_job(venv=str(tmp_path / "venv"), repo_dir="/shared/dirroute-jax")
  pip = str(tmp_path / "venv" / "bin" / "pip")
  assert slurm.venv_commands(job) == [
    ["python3.12", "-m", "venv", str(tmp_path / "venv")],
    [pip, "install", "-q", "-U", "pip"],
    [pip, "install", "-q", "-e", "/shared/dirroute-jax[cuda]"],
  ]
  assert slurm.venv_commands(_slurm_job(venv=None)) == []
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  (tmp_path / "venv" / "bin" / "python").touch()
  assert slurm.venv_commands(job) == []  # an existing venv is used as it is
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "slurm.py"),
      "--workdir=/shared/run",
      f"--venv={tmp_path}/new",
      "--python=python3.13",
      "--dry_run",
      "--",
      *DATA,
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  assert f"python3.13 -m venv {tmp_path}/new" in out.stderr and not (tmp_path / "new").exists()


def test_sbatch_script_one_process_per_gpu():
  script = slurm.sbatch_script(_slurm_job(procs="gpu"))
  assert "#SBATCH --ntasks-per-node=8" in script
  assert "--local_device_ids=\"$SLURM_LOCALID\"" in script


def test_sbatch_script_runs_every_task_with_its_own_rank(tmp_path):
  """The script under bash with fake `srun` (runs each task with SLURM's per-task variables)
  and `scontrol`; `python` is replaced by `echo`, so each task prints its train command."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # Many nodes: a reader that stops after the first line would SIGPIPE scontrol.
  (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'gpu-node-%02d\\n' $(seq 7 5000)\n")
  (bin_dir / "srun").write_text(
    "#!/bin/bash\n"
    "per_node=1\n"
    "while [[ $1 == --* ]]; do [[ $1 == --ntasks-per-node=* ]] && per_node=${1#*=}; shift;"
    " done\n"
    "n=$((SLURM_NNODES * per_node))\n"
    "for ((i = 0; i < n; i++)); do\n"
    "  SLURM_PROCID=$i SLURM_LOCALID=$((i % per_node)) SLURM_NTASKS=$n \"$@\"\n"
    "done\n"
  )
  for f in ("scontrol", "srun"):
    os.chmod(bin_dir / f, 0o755)
  job = _slurm_job(
    procs="gpu",
    gpus_per_node=2,
    repo_dir=str(tmp_path),
    venv=None,
    python="echo",
    train_args=("--config.data.files=/d/*.parquet",),
  )
  env = {
    "PATH": f"{bin_dir}:{os.environ['PATH']}",
    "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
    "SLURM_JOB_ID": "12345",
    "SLURM_NNODES": "2",
  }
  out = subprocess.run(
    ["bash", "-c", slurm.sbatch_script(job)], env=env, capture_output=True, text=True, check=True
  ).stdout.splitlines()
  assert out == [
    "launch/train.py --config=configs/433m.py --workdir=/shared/runs/433m "
    f"--config.data.files=/d/*.parquet --coordinator_address=gpu-node-07:22345 "
    f"--num_processes=4 --process_id={i} --local_device_ids={i % 2}"
    for i in range(4)
  ]


def test_slurm_dry_run_cli(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "slurm.py"),
      "--nodes=2",
      "--workdir=/shared/run",
      "--dry_run",
      "--",
      *DATA,
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=tmp_path,
  )
  assert out.stdout.startswith("#!/bin/bash") and not list(tmp_path.iterdir())
  bad = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "slurm.py"),
      "--workdir=relative/run",
      "--dry_run",
    ],
    capture_output=True,
    text=True,
  )
  assert bad.returncode != 0 and "absolute path" in bad.stderr


def test_sbatch_script_requeues_only_on_preempted(tmp_path):
  """srun's status decides: PREEMPTED (SIGTERM, saved) requeues the job, anything else is
  passed through as the job's status."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text(
    f"#!/bin/bash\n[[ $1 == requeue ]] && echo \"$@\" >> {tmp_path}/requeued\necho node-1\n"
  )
  for code in (exit_codes.PREEMPTED, exit_codes.DIVERGED, exit_codes.BUSY):
    (tmp_path / "requeued").unlink(missing_ok=True)
    (bin_dir / "srun").write_text(f"#!/bin/bash\nexit {code}\n")
    for f in ("scontrol", "srun"):
      os.chmod(bin_dir / f, 0o755)
    job = _slurm_job(repo_dir=str(tmp_path), venv=None, check_gpu=False)  # a CPU machine
    proc = subprocess.run(
      ["bash", "-c", slurm.sbatch_script(job)],
      capture_output=True,
      text=True,
      env={
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-1",
        "SLURM_JOB_ID": "7",
      },
    )
    assert proc.returncode == code
    assert (tmp_path / "requeued").exists() == (code == exit_codes.PREEMPTED)


@pytest.mark.slow
def test_sbatch_script_survives_sigterm_until_training_has_saved(tmp_path):
  """SLURM signals the batch script as well as the tasks: the script must outlive the
  training step (which saves, then exits PREEMPTED) to requeue the job."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text(
    f"#!/bin/bash\n[[ $1 == requeue ]] && echo \"$@\" >> {tmp_path}/requeued\necho node-1\n"
  )
  (bin_dir / "srun").write_text(
    f"#!/bin/bash\ntouch {tmp_path}/started\nsleep 1\nexit {exit_codes.PREEMPTED}\n"
  )
  for f in ("scontrol", "srun"):
    os.chmod(bin_dir / f, 0o755)
  script = slurm.sbatch_script(_slurm_job(repo_dir=str(tmp_path), venv=None, check_gpu=False))
  proc = subprocess.Popen(
    ["bash", "-c", script],
    stderr=subprocess.PIPE,
    text=True,
    env={
      "PATH": f"{bin_dir}:{os.environ['PATH']}",
      "SLURM_JOB_NODELIST": "node-1",
      "SLURM_JOB_ID": "7",
    },
  )
  while not (tmp_path / "started").exists():
    assert proc.poll() is None
  proc.send_signal(subprocess.signal.SIGTERM)
  assert proc.wait(timeout=30) == exit_codes.PREEMPTED
  assert (tmp_path / "requeued").read_text().split() == ["requeue", "7"]


# --- reruns exactly when a rerun can help (issue 22) ------------------------------------------


def test_run_reconnects_after_a_dropped_connection_on_a_live_slice():
  # ssh's own 255 with the slice still ACTIVE: the connection dropped, the slice did not.
  fake = FakeGcloud([None, "ACTIVE"], [tpu.SSH_LOST, 0])
  rc = tpu.run(
    _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=lambda *a: None
  )
  assert rc == 0 and fake.verbs().count("train") == 2
  assert fake.verbs().count("delete") == 1 and fake.verbs()[-1] == "delete"  # only at the end
  assert fake.verbs().count("create") == 1 and fake.verbs().count("ssh") == 1  # installed once


def test_run_waits_for_a_run_still_training_after_a_dropped_connection():
  fake, slept = FakeGcloud([None, "ACTIVE"], [tpu.SSH_LOST, exit_codes.BUSY, 0]), []
  rc = tpu.run(_job("v4-8"), poll_seconds=0, execute=fake, sleep=slept.append, log=lambda *a: None)
  assert rc == 0 and fake.verbs().count("train") == 3 and tpu.STALE_SECS in slept
  assert fake.verbs().count("delete") == 1


def test_a_diverged_run_is_not_rerun_when_describe_fails():
  fake = FakeGcloud([None, "ACTIVE", None], [exit_codes.DIVERGED])
  rc = tpu.run(
    _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=lambda *a: None
  )
  assert rc == exit_codes.DIVERGED and fake.verbs().count("train") == 1


def test_a_live_slice_is_not_taken_for_dead_on_one_failed_describe():
  fake = FakeGcloud([None, "ACTIVE", None, "ACTIVE"], [exit_codes.CRASH])
  rc = tpu.run(
    _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=lambda *a: None
  )
  assert rc == exit_codes.CRASH and fake.verbs().count("train") == 1


def test_a_run_stopped_by_ctrl_c_is_not_reported_finished():
  import signal

  class CtrlC(FakeGcloud):
    def __call__(self, cmd, check=True, capture=False):
      out = super().__call__(cmd, check, capture)
      if "--command=" in " ".join(cmd) and "launch/train.py" in _remote(cmd):
        os.kill(os.getpid(), signal.SIGINT)  # pressed while training ran; train.py saved
      return out

  fake, logged = CtrlC([None, "ACTIVE"], [exit_codes.DONE]), []
  try:
    rc = tpu.run(
      _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=logged.append
    )
  except KeyboardInterrupt:
    pytest.fail("the Ctrl-C that training handled escaped tpu.run as KeyboardInterrupt")
  assert rc == exit_codes.DONE and fake.verbs()[-1] == "delete"
  assert any("stopped by Ctrl-C" in line for line in logged), logged
  assert not any("training finished" in line for line in logged), logged


def _readme_exit_table():
  text = open(os.path.join(REPO, "README.md")).read()
  rows = {}
  for line in text[text.index("## Reliability") :].splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and cells[0].isdigit():
      rows[int(cells[0])] = (cells[1], cells[3])
    elif rows:
      break
  return rows


def test_exit_table_readme_and_launchers_agree():
  table = _readme_exit_table()
  assert table == {
    code: (exit_codes.NAMES[code], exit_codes.LAUNCHER_ACTION[code]) for code in exit_codes.NAMES
  }
  doc_rows = {
    int(line.split()[0]): line.split()[1]
    for line in exit_codes.__doc__.splitlines()
    if line.strip() and line.split()[0].isdigit()
  }
  assert doc_rows == exit_codes.NAMES
  # tpu.py: a status on a live slice reruns exactly when the table says so.
  for code in exit_codes.NAMES:
    fake = FakeGcloud([None, "ACTIVE"], [code, 0])
    rc = tpu.run(
      _job("v4-8"), poll_seconds=0, execute=fake, sleep=lambda s: None, log=lambda *a: None
    )
    reruns = fake.verbs().count("train") == 2
    assert reruns == (code in exit_codes.RERUN), code
    assert rc == (0 if reruns else code)


def test_sbatch_script_requeues_exactly_on_the_rerun_statuses(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text(
    f"#!/bin/bash\n[[ $1 == requeue ]] && echo \"$@\" >> {tmp_path}/requeued\necho node-1\n"
  )
  (bin_dir / "sleep").write_text("#!/bin/bash\n")  # the lease wait, instantly
  for code in (*exit_codes.NAMES, tpu.SSH_LOST):
    for restart in (0, 1):
      (tmp_path / "requeued").unlink(missing_ok=True)
      (bin_dir / "srun").write_text(f"#!/bin/bash\nexit {code}\n")
      for f in ("scontrol", "srun", "sleep"):
        os.chmod(bin_dir / f, 0o755)
      job = _slurm_job(repo_dir=str(tmp_path), venv=None, check_gpu=False)
      proc = subprocess.run(
        ["bash", "-c", slurm.sbatch_script(job)],
        capture_output=True,
        text=True,
        env={
          "PATH": f"{bin_dir}:{os.environ['PATH']}",
          "SLURM_JOB_NODELIST": "node-1",
          "SLURM_JOB_ID": "7",
          "SLURM_RESTART_COUNT": str(restart),
        },
      )
      assert proc.returncode == code
      want = code in exit_codes.RERUN or (restart and code in exit_codes.RERUN_AFTER_PREEMPTION)
      assert (tmp_path / "requeued").exists() == bool(want), (code, restart)


def test_train_flags_are_defined_once_and_the_modes_agree():
  """launch/train.py's flags come from cli.define_train_flags alone; its --distributed modes
  repeat train/distributed.py's (cli.py stays free of jax)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from dirroute_jax import cli  # pylint: disable=g-import-not-at-top
  from dirroute_jax.train import distributed  # pylint: disable=g-import-not-at-top

  assert cli.DISTRIBUTED_MODES == distributed.MODES
  fv = flags.FlagValues()
  holders = cli.define_train_flags(fv, sys_argv=["train.py"])
  assert set(vars(holders)) <= set(fv)
  with open(os.path.join(os.path.dirname(__file__), "..", "launch", "train.py")) as f:
    assert "DEFINE_" not in f.read()
