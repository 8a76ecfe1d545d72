"""The training loop: data -> joint step -> metrics, evaluation and checkpoints, with exact
resume from the latest complete checkpoint in the workdir. What happens after a step
(evaluate, log, save, stop) is train/schedule.py's decision; when to save by steps or time is
the checkpointer's SavePolicy (train/checkpoint.py).

What protects a workdir (README "Reliability"): one writer at a time (train/lock.py); a resume
whose config changes what the run means is refused before anything is written; a state with
NaN/Inf is never saved; Ctrl-C and SIGTERM save at the next step boundary (SIGTERM then exits
PREEMPTED, see exit_codes.py); a failed save stops training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time

import jax
import numpy as np
from absl import logging

from dirroute_jax import exit_codes
from dirroute_jax import workdir as workdir_lib
from dirroute_jax.config import ConfigError, default_config, flatten, validate_config
from dirroute_jax.data import tokenizers
from dirroute_jax.data.pipeline import make_data
from dirroute_jax.model import flops as model_flops
from dirroute_jax.model import kernels
from dirroute_jax.model.variants import PREFIX_ONLY as PREFIX
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import checkpoint, flops, integrity, lock, sharding
from dirroute_jax.train import metrics as metrics_lib
from dirroute_jax.train import plan as plan_lib
from dirroute_jax.train import profile as profile_lib
from dirroute_jax.train import schedule as schedule_lib
from dirroute_jax.train import signals as stop_signals
from dirroute_jax.train import step as step_lib
from dirroute_jax.train.evaluate import evaluate, to_global
from dirroute_jax.train.metrics import MetricsWriter
from dirroute_jax.train.samples import config_hparams, write_eval_samples

# Config keys a resume may change: they say how long and how observably the run goes, or how
# it is laid out on devices, not what it computes. Everything else (model, models, pooling,
# tokenizer, data, seed, batch, optimizer) changes what the run means and is refused.
RESUMABLE_KEYS = (
  "steps",
  "log_every",
  "eval_every",
  "eval_batches",
  "checkpoint_every",
  "checkpoint_every_secs",
  "checkpoint.keep",
  "checkpoint.permanent_every",
  "data.cache_dir",
  "data.worker_count",
  "grad_accum_steps",
  "model.remat",
  "mesh.",
  "profile_steps",
)


class Diverged(FloatingPointError):
  """A loss or the state became non-finite; the message says which checkpoint is usable."""


@dataclasses.dataclass
class RunSummary:
  last_step: int
  interrupted: bool  # stopped by Ctrl-C or SIGTERM before `steps`, after saving
  eval_metrics: dict
  workdir: str
  preempted: bool = False  # the stop was a SIGTERM: rerun to resume (exit_codes.PREEMPTED)


class _StopFlag:
  """Ctrl-C or SIGTERM ends the current step, saves and exits; a second Ctrl-C aborts at once
  with one line (no traceback through JAX and Orbax's threads). A repeated SIGTERM is not a
  second Ctrl-C: schedulers send it more than once (SLURM signals the job step and srun
  forwards it), and aborting then would lose the save the first one asked for."""

  def __init__(self, on_abort=lambda: None):
    self.stop = False
    self.signum = None
    self._on_abort = on_abort
    self._previous = {}

  def __enter__(self):
    def handler(signum, frame):
      del frame
      if self.stop and signum == signal.SIGTERM:
        if self.signum != signal.SIGTERM:  # Ctrl-C, then the scheduler: rerun when it can
          self.signum = signal.SIGTERM
        print("\nSIGTERM again: still finishing this step and saving.", flush=True)
        return
      if self.stop:
        print(
          f"\n{signal.Signals(signum).name} again: aborted without saving; the last "
          "complete checkpoint is intact.",
          flush=True,
        )
        self._on_abort()
        os._exit(exit_codes.ABORTED)  # pylint: disable=protected-access
      self.stop, self.signum = True, signum
      what = "Interrupted" if signum == signal.SIGINT else "SIGTERM (preemption?)"
      print(
        f"\n{what}: finishing this step, saving a checkpoint, then exiting "
        "(Ctrl-C again to abort without saving).",
        flush=True,
      )

    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread: no handler, signals behave as usual
        pass
    if self._previous:  # signals that came before this handler existed (train/signals.py)
      for signum in stop_signals.take_pending():
        handler(signum, None)
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  @property
  def level(self) -> int:
    """0: go on; 1: stop (Ctrl-C); 2: stop, preempted (SIGTERM). Processes agree on the max."""
    return 0 if not self.stop else (2 if self.signum == signal.SIGTERM else 1)


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return (
    f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 3600
    else f"{seconds // 60}m{seconds % 60:02d}s"
  )


def config_changes(saved: dict, requested: dict) -> tuple[list[str], list[str]]:
  """(changes that alter what the run means, allowed changes), as 'key: old -> new'.

  A key the saved config lacks (added to the code since) counts as its default value."""
  old, new = flatten(saved), flatten(requested)
  defaults = flatten(checkpoint.config_to_json(default_config()))
  meaning, allowed = [], []
  for key in sorted(new):
    before = old.get(key, defaults.get(key, new[key]))
    if before != new[key]:
      line = f"{key}: {before!r} -> {new[key]!r}"
      resumable = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)
      (allowed if resumable else meaning).append(line)
  return meaning, allowed


def _check_resume(
  cfg, ckpt, latest: int, fingerprint: dict, workdir: str, allow_config_change: bool, say
) -> None:
  """Refuses (ConfigError) a resume whose config or data differ from the checkpoint's in what
  the run means, unless `allow_config_change`. Runs before anything is written."""
  try:
    saved = ckpt.restore_config()
  except FileNotFoundError:
    say(
      f"WARNING: the checkpoints in {workdir} hold no readable config; the resume cannot "
      "be checked against it."
    )
    return
  meaning, allowed = config_changes(saved, checkpoint.config_to_json(cfg))
  saved_fp, damaged = workdir_lib.read_data_fingerprint(workdir)
  if damaged:
    say(
      f"WARNING: {damaged}; the data cannot be compared with the checkpoint's (the config "
      "still is). It is rewritten now."
    )
  for key, (before, now) in workdir_lib.fingerprint_changes(saved_fp, fingerprint).items():
    meaning.append(
      f"{key} fingerprint: {before} -> {now} (the "
      f"{'text' if key == 'corpus' else 'tokenizer'} differs from the one "
      "the checkpoint was trained on)"
    )
  if meaning and not allow_config_change:
    shown = "; ".join(meaning[:6]) + (f"; and {len(meaning) - 6} more" if len(meaning) > 6 else "")
    raise ConfigError(
      f"{workdir} holds a run (step {latest}) with a different config: {shown}. Resuming "
      "would mix two experiments under one name. Use the original settings, a fresh "
      "--workdir, or --allow_config_change to resume anyway."
    )
  if meaning:
    say(
      f"WARNING: resuming step {latest} with a changed config (--allow_config_change): "
      + "; ".join(meaning)
    )
  steps_changed = int(saved.get("steps", cfg.steps)) != cfg.steps
  if steps_changed and cfg.steps > latest:
    say(
      f"WARNING: steps changed {saved['steps']} -> {cfg.steps}: the cosine learning-rate "
      f"schedule now decays over {cfg.steps} steps, so from step {latest} on the LR differs "
      "from the original run's."
    )
  if cfg.steps < latest:
    say(
      f"WARNING: steps={cfg.steps} is below the checkpoint's step {latest}: nothing to "
      "train; the run stays at step {latest}.".replace("{latest}", str(latest))
    )
  other = [c for c in allowed if not c.startswith("steps:")]
  if other:
    logging.info("Resuming with changed settings: %s", "; ".join(other))


def _diverged(ckpt, workdir: str, what: str, trusted_before: int) -> Diverged:
  """Moves checkpoints whose weights were not shown to give a finite loss (steps >=
  `trusted_before`) aside, and says truthfully what is left."""
  ckpt.wait()
  suspect = [s for s in ckpt.all_steps() if s >= trusted_before]
  moved = ""
  if suspect:
    dest = ckpt.move_aside(suspect, workdir_lib.DIVERGED_CHECKPOINTS)
    moved = (
      f" Checkpoint(s) {suspect}, whose weights were not shown to give a finite loss, "
      f"were moved to {dest}."
    )
  last = ckpt.latest_step()
  left = (
    f" The newest checkpoint is now step {last}: finite, and its weights gave finite "
    "losses after it."
    if last is not None
    else " No checkpoint is left."
  )
  return Diverged(
    f"{what}: training stopped.{moved}{left} Lower optim.peak_lr or raise "
    "optim.warmup_steps, then rerun with --allow_config_change (or use a fresh "
    "--workdir)."
  )


def _check_finite(metrics: dict, step: int, ckpt, workdir: str, trusted_before: int):
  bad = [k for k, v in metrics.items() if k.endswith("/loss") and not math.isfinite(float(v))]
  if bad:
    raise _diverged(
      ckpt,
      workdir,
      f"non-finite {', '.join(bad)} at step {step} (computed "
      f"from the weights after step {step - 1})",
      trusted_before,
    )


def train(cfg, workdir: str, *, log=print, allow_config_change: bool = False) -> RunSummary:
  """Trains every model of `cfg.models` side by side; resumes from `workdir` if it holds a
  checkpoint (refusing a config that changes what the run means unless
  `allow_config_change`). Returns the final held-out metrics."""
  validate_config(cfg)
  workdir_lib.check_writable(workdir, f"to --workdir={workdir!r}")
  is_main = jax.process_index() == 0
  say = log if is_main else (lambda *a, **k: None)
  # Process 0 holds the lease for the whole job; it is released on every way out.
  lease = lock.WorkdirLock(workdir) if is_main else contextlib.nullcontext()
  with lease, _StopFlag(on_abort=getattr(lease, "release", lambda: None)) as stop:
    return _train(cfg, workdir, say, stop, lease, allow_config_change)


def _train(cfg, workdir, say, stop, lease, allow_config_change) -> RunSummary:
  t_start = time.time()
  early = schedule_lib.max_over_processes(stop.level)
  if early:  # a signal during start-up: nothing trained, nothing to save, the workdir as it was
    say(
      f"{'SIGTERM' if early == 2 else 'Ctrl-C'} before training began: stopping; the "
      f"workdir is unchanged. Rerun the same command to start or resume."
    )
    return RunSummary(
      last_step=0, interrupted=True, eval_metrics={}, workdir=workdir, preempted=early == 2
    )
  routing = [n for n, mc in model_configs(cfg).items() if mc.routing]
  if cfg.model.pooling == "sequence_mean" and routing:
    say(
      "WARNING: pooling=sequence_mean is the paper's router and is NOT causal: every "
      "position's routing sees the whole sequence, future tokens included. Its perplexity "
      "is not comparable with a causal LM; use --config.model.pooling=causal_mean for that."
    )

  mesh = sharding.make_mesh(cfg.mesh)
  data = make_data(cfg, process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(
    workdir,
    keep=cfg.checkpoint.keep,
    permanent_every=cfg.checkpoint.permanent_every,
    step_leaf="step",
    policy=checkpoint.SavePolicy(
      every_steps=cfg.checkpoint_every, every_secs=float(cfg.checkpoint_every_secs)
    ),
  )
  latest = ckpt.latest_step()
  if latest is not None:
    _check_resume(cfg, ckpt, latest, data.record(), workdir, allow_config_change, say)
  if jax.process_index() == 0:  # only now that the resume is known to be the same run
    tokenizers.save_to_workdir(data.tokenizer, workdir)
    workdir_lib.write_data_fingerprint(workdir, data.record())
  trainer = step_lib.make_trainer(cfg, mesh)
  data_iter = data.train_iter(0)

  with jax.set_mesh(mesh):
    if latest is not None:
      state, start = ckpt.restore(
        trainer.abstract_state(),
        data_iter=data_iter,
        data_fallback=lambda s: data.seek(data_iter, s),
        data_verify=lambda s: _data_position_error(data_iter, s),
      )
      say(f"Resumed from step {start} in {workdir}")
    else:
      state, start = trainer.init_state(jax.random.key(cfg.seed)), 0
    say(kernels.attention_impl_summary(cfg.model, trainer.mesh.devices.flat[0]))
    train_step = _compile_train_step(trainer, state, say)
    profiler = profile_lib.ProfileWindow(cfg.get("profile_steps", ""), workdir, say)
    say(
      f"Training {', '.join(trainer.models)} for {cfg.steps} steps: batch {cfg.batch_size} x "
      f"{cfg.seq_len} tokens, {jax.device_count()} device(s), mesh {dict(mesh.shape)}, "
      f"tokenizer {data.tokenizer.name} "
      f"({data.stats['train_tokens']:,} train tokens)"
      + (f"; routed pooling {cfg.model.pooling}" if routing else "")
    )
    say(
      f"Metrics go to {workdir_lib.metrics(workdir)}, TensorBoard events to "
      f"{workdir_lib.tensorboard(workdir)}, checkpoints to "
      f"{workdir_lib.checkpoints(workdir)}"
    )
    writer = MetricsWriter(workdir, resume_step=start, enabled=jax.process_index() == 0)
    writer.hparams(
      config_hparams(cfg),
      [metrics_lib.key(metrics_lib.EVAL, n, "perplexity") for n in trainer.models],
    )
    run = _Run(cfg, workdir, trainer, data, data_iter, ckpt, writer, lease, say, state, start)
    schedule = schedule_lib.Schedule.from_config(cfg, ckpt.policy, lambda: stop.level)
    ckpt.policy.restart_clock()
    done, stopped = start, 0
    try:
      for done in range(start + 1, cfg.steps + 1):
        batch = to_global(trainer, next(data_iter))
        with profiler.step(done):
          run.state, metrics = train_step(run.state, batch)
        profiler.after(done, run.state)
        act = schedule.at(done)
        if not act.any:
          continue
        metrics = run.fetch(done, metrics)
        if act.evaluate:
          run.evaluate(done, metrics)
        if act.report:
          run.report(done, metrics)
        if act.save:
          run.save(done, force=act.stopping)
        if act.stopping:
          stopped = act.stop
          break
      interrupted = bool(stopped) and done < cfg.steps
      if not interrupted:
        run.finish(done)
      profiler.close()  # a window that runs past the last step ends with it
      ckpt.close()  # waits for the last save; raises if it failed
    except BaseException:
      # Already failing: report that error, not a second one from the in-flight save.
      with contextlib.suppress(Exception):
        ckpt.close()
      raise
    finally:
      writer.close()

  if interrupted:
    say(f"Stopped at step {done}; checkpoint saved in {workdir}. Rerun the same command to resume.")
  else:
    say(_summary(run.eval_metrics, trainer.models, data.domains, data.num_eval_batches))
  say(f"Elapsed {_fmt_time(time.time() - t_start)}")
  return RunSummary(
    last_step=done,
    interrupted=interrupted,
    eval_metrics=run.eval_metrics,
    workdir=workdir,
    preempted=interrupted and stopped == 2,
  )


class _Throughput:
  """Seconds per step, measured between progress lines. The first window holds compilation
  and warm-up: timed, but not throughput. Throughput is the median over later windows (robust
  to eval and save pauses)."""

  def __init__(self, start: int, tokens_per_step: int, flops_per_step: float, peak):
    self.start, self.tokens_per_step = start, tokens_per_step
    self.flops_per_step, self.peak = flops_per_step, peak
    self.last_time, self.last_step = time.time(), start
    self.step_times = []

  def window(self, done: int, metrics: dict) -> tuple[float, float | None]:
    """(median seconds per step, or NaN; the warm-up window's seconds, or None), adding the
    `perf/...` metrics to `metrics` once there is a throughput."""
    now = time.time()
    warmup_s = now - self.last_time if self.last_step == self.start else None
    if warmup_s is None:
      self.step_times.append((now - self.last_time) / (done - self.last_step))
    sec_per_step = float(np.median(self.step_times)) if self.step_times else float("nan")
    if self.step_times:
      metrics["perf/tokens_per_sec"] = self.tokens_per_step / sec_per_step
      metrics["perf/sec_per_step"] = sec_per_step
      per_device = self.flops_per_step / sec_per_step / jax.device_count()
      metrics["perf/model_tflops_per_device"] = per_device / 1e12
      if self.peak:
        metrics["perf/mfu"] = per_device / self.peak
    return sec_per_step, warmup_s

  def restart(self, done: int):
    self.last_time, self.last_step = time.time(), done


class _Run:
  """A run between its steps: the state, and what the loop does with it at a step the
  schedule (train/schedule.py) picks: fetch and check the metrics, evaluate, report, save."""

  def __init__(
    self, cfg, workdir, trainer, data, data_iter, ckpt, writer, lease, say, state, start
  ):
    self.cfg, self.workdir, self.trainer, self.data = cfg, workdir, trainer, data
    self.data_iter, self.ckpt, self.writer, self.lease, self.say = (
      data_iter,
      ckpt,
      writer,
      lease,
      say,
    )
    self.state, self.start = state, start
    self.is_main = jax.process_index() == 0
    self.eval_metrics, self.eval_at = {}, None
    # Checkpoints below this step gave a finite loss after them (seen in this process; the
    # restored one has not been yet).
    self.trusted_before = start
    tokens_per_step = cfg.batch_size * cfg.seq_len
    # Model FLOPs of the whole set per step, convention in model/flops.py.
    flops_per_step = tokens_per_step * sum(
      model_flops.flops_per_token(mc, cfg.seq_len) for mc in model_configs(cfg).values()
    )
    self.throughput = _Throughput(
      start,
      tokens_per_step,
      flops_per_step,
      flops.peak_flops_per_device(jax.devices()[0].device_kind),
    )

  def fetch(self, done: int, metrics) -> dict:
    """The step's metrics on the host, after the checks that stop training: a non-finite
    loss, a failed background save (disk full), a lost writer lease."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    _check_finite(metrics, done, self.ckpt, self.workdir, self.trusted_before)
    self.trusted_before = done
    self.ckpt.check()
    if self.is_main:
      self.lease.check()
    return metrics

  def run_eval(self) -> dict:
    return evaluate(
      self.trainer,
      self.state,
      self.data.eval_batches(self.cfg.eval_batches or None),
      self.data.domains,
    )

  def evaluate(self, done: int, metrics: dict):
    cfg, models = self.cfg, self.trainer.models
    self.eval_metrics, self.eval_at = self.run_eval(), done
    metrics.update(self.eval_metrics)
    if (
      cfg.eval_samples
      and self.is_main
      and jax.process_count() == 1
      and cfg.data.source != "synthetic"
    ):
      write_eval_samples(
        self.writer,
        done,
        models,
        {n: self.state["models"][n]["params"] for n in models},
        self.data.tokenizer,
        cfg.eval_samples,
        cfg.eval_sample_tokens,
      )

  def report(self, done: int, metrics: dict):
    """A metrics.jsonl row and a progress line."""
    sec_per_step, warmup_s = self.throughput.window(done, metrics)
    self.writer.write(done, metrics)
    self.say(
      _progress_line(
        done,
        self.cfg.steps,
        metrics,
        sec_per_step,
        self.throughput.tokens_per_step,
        warmup_s,
        done - self.start,
      )
    )
    self.throughput.restart(done)

  def save(self, done: int, force: bool = False):
    _save(
      self.ckpt,
      done,
      self.state,
      self.data_iter,
      self.cfg,
      self.workdir,
      self.trusted_before,
      force=force,
    )

  def finish(self, done: int):
    """The last step's checkpoint and held-out metrics, unless the loop already has them."""
    if self.start < self.cfg.steps:  # not finished before this run
      self.save(done)
    if self.eval_at != done:
      # A rerun of a finished run reuses the row already written (one process: with
      # several, all must take part in the evaluation, and the row is merged, not added).
      self.eval_metrics = self.writer.eval_row(done) if jax.process_count() == 1 else {}
      if not self.eval_metrics:
        self.eval_metrics = self.run_eval()
        self.writer.write(done, self.eval_metrics)


def _compile_train_step(trainer, state, say):
  """The train step compiled ahead of time for `state` and the batch layout, and a line saying
  how much of the device's memory it needs (from its compiler's memory analysis), with a
  warning above plan.WARN_FRACTION: a run close to the edge says so before its first step."""
  compiled = trainer.train_step.lower(state, plan_lib.abstract_batch(trainer)).compile()
  line, _ = plan_lib.memory_report(compiled, trainer.mesh.local_devices[0])
  say(line)
  return compiled


def _data_position_error(data_iter, step: int) -> str | None:
  """Batches are a pure function of the step (data/pipeline.py: Data.seek), so the restored
  iterator of step N must stand at index N; why not, or None. An iterator whose state has no
  index (grain's multi-worker prefetch) cannot be checked."""
  position = data_iter.get_state()
  index = position.get("next_index") if isinstance(position, dict) else None
  if index is None or int(index) == int(step):
    return None
  return f"its next_index is {index}, the step's batches start at {step}"


def _save(ckpt, step, state, data_iter, cfg, workdir, trusted_before, force=False):
  try:
    ckpt.save(step, state, data_iter=data_iter, config=cfg, force=force)
  except integrity.NonFiniteStateError as e:
    raise _diverged(ckpt, workdir, str(e), trusted_before) from e


def _progress_line(
  done, steps, m, sec_per_step, tokens_per_step, warmup_s=None, warmup_steps=0
) -> str:
  parts = [f"step {done:>{len(str(steps))}}/{steps}"]
  tree = metrics_lib.nest(m)
  evals = tree.get(metrics_lib.EVAL, {})
  names = metrics_lib.display_order(
    n
    for n, v in tree.items()
    if n not in (metrics_lib.DELTA, metrics_lib.EVAL) and isinstance(v, dict) and "loss" in v
  )
  losses = [f"{name} {tree[name]['loss']:.4f}" for name in names]
  if losses:
    parts.append("loss " + " ".join(losses))
  if "loss" in tree.get(metrics_lib.DELTA, {}):
    parts.append(f"delta {tree[metrics_lib.DELTA]['loss']:+.4f}")
  ppl = [
    f"{name} {evals[name]['perplexity']:.2f}"
    for name in names
    if "perplexity" in evals.get(name, {})
  ]
  if ppl:
    parts.append("eval ppl " + " ".join(ppl))
  if warmup_s is not None:
    # The step was compiled before the loop (its memory line); the first steps still warm up.
    parts.append(
      f"warming up: first {warmup_steps} step(s) took {warmup_s:.1f}s; "
      "throughput from the next line on"
    )
  elif math.isfinite(sec_per_step):
    parts.append(f"{tokens_per_step / sec_per_step:,.0f} tok/s")
    if "perf/mfu" in m:
      parts.append(f"MFU {100 * m['perf/mfu']:.1f}%")
    parts.append(f"ETA {_fmt_time((steps - done) * sec_per_step)}")
  return " | ".join(parts)


def _summary(eval_metrics: dict, models, domains, total_batches: int) -> str:
  evals = metrics_lib.nest(eval_metrics).get(metrics_lib.EVAL, {})
  n = int(evals.get("batches", total_batches))
  lines = [
    f"Held-out perplexity ({'all' if n == total_batches else n} of {total_batches} "
    "held-out batches):"
  ]
  for name in [*models, PREFIX]:
    model = evals.get(name, {})
    if "perplexity" not in model:
      continue
    per_domain = ", ".join(
      f"{d} {model[d]['perplexity']:.2f}" for d in domains if "perplexity" in model.get(d, {})
    )
    lines.append(f"  {name:<13} {model['perplexity']:9.2f}   ({per_domain})")
  if "loss" in evals.get(metrics_lib.DELTA, {}):
    ratio = math.exp(evals[metrics_lib.DELTA]["loss"])
    first, second = metrics_lib.DELTA_PAIR
    lines.append(f"  {first} / {second} perplexity = {ratio:.4f} ({100 * (ratio - 1):+.2f}%)")
  if "perplexity" in evals.get(PREFIX, {}):
    lines.append(
      f"  ({PREFIX}: the sequence_mean router given only the prefix, as it would "
      "be when generating; its distance to routed is the future-token leak)"
    )
  return "\n".join(lines)
