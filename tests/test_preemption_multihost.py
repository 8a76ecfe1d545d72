"""SIGTERM on a 2-process run: every process must stop and save at the same step (each writes
its part of the checkpoint), and every process must exit PREEMPTED, also the one that got no
signal, so that a launcher reruns the job."""

import signal
import time

import pytest
from test_distributed import _build_cache, _free_port, _start, _train_cmd

from dirroute_jax import exit_codes
from dirroute_jax.train import checkpoint


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path):
  cache = _build_cache(tmp_path)
  port = _free_port()
  procs = [
    _start(
      _train_cmd(
        tmp_path / "wd",
        cache,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        "--config.steps=100000",
        "--config.checkpoint_every=0",
        "--config.log_every=1000",
      ),
      1,
      tmp_path / f"p{i}.log",
    )
    for i in range(2)
  ]
  deadline = time.time() + 240
  while "Training routed" not in open(tmp_path / "p0.log").read():
    assert time.time() < deadline and all(p.poll() is None for p, _ in procs)
    time.sleep(0.2)
  time.sleep(2)
  procs[1][0].send_signal(signal.SIGTERM)  # process 0 gets nothing
  codes = [p.wait(timeout=240) for p, _ in procs]
  for _, log in procs:
    log.close()
  logs = [open(tmp_path / f"p{i}.log").read() for i in range(2)]
  assert codes == [exit_codes.PREEMPTED] * 2, logs
  stopped = int(logs[0].split("Stopped at step ")[1].split(";")[0])
  assert checkpoint.CheckpointReader(str(tmp_path / "wd")).all_steps() == [stopped]
  assert stopped % 10 == 0  # agreed at a multiple of the agreement interval
