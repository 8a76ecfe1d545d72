"""The training loop: data -> joint step -> metrics, evaluation and checkpoints, with exact
resume from the latest complete checkpoint in the workdir.

What protects a workdir (README "Reliability"): one writer at a time (train/lock.py); a resume
whose config changes what the run means is refused before anything is written; a state with
NaN/Inf is never saved; Ctrl-C and SIGTERM save at the next step boundary (SIGTERM then exits
PREEMPTED, see exit_codes.py); a failed save stops training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from dirroute_jax.config import ConfigError, default_config, flatten, validate_config
from dirroute_jax.data import tokenizers
from dirroute_jax.data.pipeline import make_data
from dirroute_jax import exit_codes, workdir as workdir_lib
from dirroute_jax.model import attention
from dirroute_jax.train import checkpoint, flops, integrity, lock, plan as plan_lib, sharding
from dirroute_jax.train import profile as profile_lib, signals as stop_signals, step as step_lib
from dirroute_jax.train.evaluate import PREFIX, evaluate, to_global
from dirroute_jax.train.metrics import MetricsWriter
from dirroute_jax.train.samples import config_hparams, write_eval_samples


_AGREE_EVERY = 10  # steps between multi-process agreements on a stop or a time-based save

# Config keys a resume may change: they say how long and how observably the run goes, or how
# it is laid out on devices, not what it computes. Everything else (model, models, pooling,
# tokenizer, data, seed, batch, optimizer) changes what the run means and is refused.
RESUMABLE_KEYS = ("steps", "log_every", "eval_every", "eval_batches", "checkpoint_every",
                  "checkpoint_every_secs", "checkpoint.keep", "checkpoint.permanent_every",
                  "data.cache_dir", "data.worker_count", "grad_accum_steps", "model.remat",
                  "mesh.", "profile_steps")


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
        print(f"\n{signal.Signals(signum).name} again: aborted without saving; the last "
              "complete checkpoint is intact.", flush=True)
        self._on_abort()
        os._exit(exit_codes.ABORTED)  # pylint: disable=protected-access
      self.stop, self.signum = True, signum
      what = "Interrupted" if signum == signal.SIGINT else "SIGTERM (preemption?)"
      print(f"\n{what}: finishing this step, saving a checkpoint, then exiting "
            "(Ctrl-C again to abort without saving).", flush=True)
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
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def _max_over_processes(value: int) -> int:
  """The largest `value` of all processes, on every process: a save or a stop must happen at
  the same step everywhere (each process writes its part of the checkpoint)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


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
      resumable = any(key == k or (k.endswith(".") and key.startswith(k))
                      for k in RESUMABLE_KEYS)
      (allowed if resumable else meaning).append(line)
  return meaning, allowed


def _check_resume(cfg, ckpt, latest: int, fingerprint: dict, workdir: str,
                  allow_config_change: bool, say) -> None:
  """Refuses (ConfigError) a resume whose config or data differ from the checkpoint's in what
  the run means, unless `allow_config_change`. Runs before anything is written."""
  try:
    saved = ckpt.restore_config()
  except FileNotFoundError:
    say(f"WARNING: the checkpoints in {workdir} hold no readable config; the resume cannot "
        "be checked against it.")
    return
  meaning, allowed = config_changes(saved, checkpoint.config_to_json(cfg))
  saved_fp, damaged = workdir_lib.read_data_fingerprint(workdir)
  if damaged:
    say(f"WARNING: {damaged}; the data cannot be compared with the checkpoint's (the config "
        "still is). It is rewritten now.")
  if saved_fp is not None:
    for key in ("corpus", "tokenizer"):
      if key in saved_fp and saved_fp[key] != fingerprint[key]:
        meaning.append(f"{key} fingerprint: {saved_fp[key]} -> {fingerprint[key]} (the "
                       f"{'text' if key == 'corpus' else 'tokenizer'} differs from the one "
                       "the checkpoint was trained on)")
  if meaning and not allow_config_change:
    shown = "; ".join(meaning[:6]) + (f"; and {len(meaning) - 6} more" if len(meaning) > 6
                                      else "")
    raise ConfigError(
        f"{workdir} holds a run (step {latest}) with a different config: {shown}. Resuming "
        "would mix two experiments under one name. Use the original settings, a fresh "
        "--workdir, or --allow_config_change to resume anyway.")
  if meaning:
    say(f"WARNING: resuming step {latest} with a changed config (--allow_config_change): "
        + "; ".join(meaning))
  steps_changed = int(saved.get("steps", cfg.steps)) != cfg.steps
  if steps_changed and cfg.steps > latest:
    say(f"WARNING: steps changed {saved['steps']} -> {cfg.steps}: the cosine learning-rate "
        f"schedule now decays over {cfg.steps} steps, so from step {latest} on the LR differs "
        "from the original run's.")
  if cfg.steps < latest:
    say(f"WARNING: steps={cfg.steps} is below the checkpoint's step {latest}: nothing to "
        "train; the run stays at step {latest}.".replace("{latest}", str(latest)))
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
    moved = (f" Checkpoint(s) {suspect}, whose weights were not shown to give a finite loss, "
             f"were moved to {dest}.")
  last = ckpt.latest_step()
  left = (f" The newest checkpoint is now step {last}: finite, and its weights gave finite "
          "losses after it." if last is not None else " No checkpoint is left.")
  return Diverged(f"{what}: training stopped.{moved}{left} Lower optim.peak_lr or raise "
                  "optim.warmup_steps, then rerun with --allow_config_change (or use a fresh "
                  "--workdir).")


def _check_finite(metrics: dict, step: int, ckpt, workdir: str, trusted_before: int):
  bad = [k for k, v in metrics.items() if k.endswith("/loss") and not math.isfinite(float(v))]
  if bad:
    raise _diverged(ckpt, workdir, f"non-finite {', '.join(bad)} at step {step} (computed "
                    f"from the weights after step {step - 1})", trusted_before)


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
  is_main = jax.process_index() == 0
  early = _max_over_processes(stop.level)
  if early:  # a signal during start-up: nothing trained, nothing to save, the workdir as it was
    say(f"{'SIGTERM' if early == 2 else 'Ctrl-C'} before training began: stopping; the "
        f"workdir is unchanged. Rerun the same command to start or resume.")
    return RunSummary(last_step=0, interrupted=True, eval_metrics={}, workdir=workdir,
                      preempted=early == 2)
  if cfg.model.pooling == "sequence_mean" and "routed" in cfg.models:
    say("WARNING: pooling=sequence_mean is the paper's router and is NOT causal: every "
        "position's routing sees the whole sequence, future tokens included. Its perplexity "
        "is not comparable with a causal LM; use --config.model.pooling=causal_mean for that.")

  mesh = sharding.make_mesh(cfg.mesh)
  data = make_data(cfg, process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(workdir, keep=cfg.checkpoint.keep,
                                 permanent_every=cfg.checkpoint.permanent_every,
                                 step_leaf="step")
  fingerprint = {"corpus": data.stats.get("corpus_fingerprint"),
                 "tokenizer": data.tokenizer.fingerprint}
  latest = ckpt.latest_step()
  if latest is not None:
    _check_resume(cfg, ckpt, latest, fingerprint, workdir, allow_config_change, say)
  if is_main:  # only now that the resume is known to be the same run
    tokenizers.save_to_workdir(data.tokenizer, workdir)
    workdir_lib.data_fingerprint(workdir).write_text(json.dumps(data.record(), indent=1))
  trainer = step_lib.make_trainer(cfg, mesh)
  data_iter = data.train_iter(0)
  tokens_per_step = cfg.batch_size * cfg.seq_len
  # Model FLOPs of the whole set per step, convention in train/flops.py.
  flops_per_step = tokens_per_step * sum(
      flops.flops_per_token(mc, cfg.seq_len) for mc in step_lib.model_configs(cfg).values())
  peak = flops.peak_flops_per_device(jax.devices()[0].device_kind)
  save_secs = float(cfg.checkpoint_every_secs)

  with jax.set_mesh(mesh):
    if latest is not None:
      state, start = ckpt.restore(trainer.abstract_state(), data_iter=data_iter,
                                  data_fallback=lambda s: data.seek(data_iter, s),
                                  data_verify=lambda s: _data_position_error(data_iter, s))
      say(f"Resumed from step {start} in {workdir}")
    else:
      state, start = trainer.init_state(jax.random.key(cfg.seed)), 0
    say(attention.attention_impl_summary(cfg.model, trainer.mesh.devices.flat[0]))
    train_step = _compile_train_step(trainer, state, say)
    profiler = profile_lib.ProfileWindow(cfg.get("profile_steps", ""), workdir, say)
    say(f"Training {', '.join(trainer.models)} for {cfg.steps} steps: batch {cfg.batch_size} x "
        f"{cfg.seq_len} tokens, {jax.device_count()} device(s), mesh {dict(mesh.shape)}, "
        f"tokenizer {data.tokenizer.name} "
        f"({data.stats['train_tokens']:,} train tokens)"
        + (f"; routed pooling {cfg.model.pooling}" if "routed" in trainer.models else ""))
    say(f"Metrics go to {workdir_lib.metrics(workdir)}, TensorBoard events to "
        f"{workdir_lib.tensorboard(workdir)}, checkpoints to "
        f"{workdir_lib.checkpoints(workdir)}")
    writer = MetricsWriter(workdir, resume_step=start, enabled=is_main)
    writer.hparams(config_hparams(cfg), [f"eval/{n}/perplexity" for n in trainer.models])
    eval_metrics, eval_at = {}, None

    def run_eval():
      return evaluate(trainer, state, data.eval_batches(cfg.eval_batches or None),
                      data.domains)

    last_log_time, last_log_step, done = time.time(), start, start
    last_save_time = time.time()
    # Checkpoints below this step gave a finite loss after them (seen in this process; the
    # restored one has not been yet).
    trusted_before = start
    step_times = []
    interrupted = preempted = False
    try:
      for done in range(start + 1, cfg.steps + 1):
        batch = to_global(trainer, next(data_iter))
        with profiler.step(done):
          state, metrics = train_step(state, batch)
        profiler.after(done, state)
        is_log = done % cfg.log_every == 0 or done == cfg.steps
        # Decided once, before the blocking fetch below (during which a signal may arrive):
        # a stop seen here is always saved; one that arrives later stops the next step.
        # Several processes agree at log steps and every _AGREE_EVERY steps (each agreement
        # waits for the device queue), well inside a preemption's grace period.
        agree = jax.process_count() == 1 or is_log or done % _AGREE_EVERY == 0
        stop_level = _max_over_processes(stop.level) if agree else 0
        stopping = stop_level > 0
        due = bool(save_secs) and time.time() - last_save_time >= save_secs
        due = bool(_max_over_processes(due)) if agree else False
        is_eval = cfg.eval_every and done % cfg.eval_every == 0
        is_save = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or stopping or due
        is_log = is_log or stopping
        if not (is_log or is_eval or is_save):
          continue
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, done, ckpt, workdir, trusted_before)
        trusted_before = done
        ckpt.check()  # a background save that failed (disk full) stops training here
        if is_main:
          lease.check()
        if is_eval:
          eval_metrics, eval_at = run_eval(), done
          metrics.update(eval_metrics)
          if (cfg.eval_samples and is_main and jax.process_count() == 1
              and cfg.data.source != "synthetic"):
            write_eval_samples(writer, done, trainer.models,
                               {n: state["models"][n]["params"] for n in trainer.models},
                               data.tokenizer, cfg.eval_samples, cfg.eval_sample_tokens)
        if is_log or is_eval:
          now = time.time()
          # The first window holds compilation and warm-up: timed, but not throughput.
          # Throughput is the median over later windows (robust to eval and save pauses).
          warmup_s = now - last_log_time if last_log_step == start else None
          if warmup_s is None:
            step_times.append((now - last_log_time) / (done - last_log_step))
          sec_per_step = float(np.median(step_times)) if step_times else float("nan")
          if step_times:
            metrics["perf/tokens_per_sec"] = tokens_per_step / sec_per_step
            metrics["perf/sec_per_step"] = sec_per_step
            per_device = flops_per_step / sec_per_step / jax.device_count()
            metrics["perf/model_tflops_per_device"] = per_device / 1e12
            if peak:
              metrics["perf/mfu"] = per_device / peak
          writer.write(done, metrics)
          say(_progress_line(done, cfg.steps, metrics, sec_per_step, tokens_per_step,
                             warmup_s, done - start))
          last_log_time, last_log_step = time.time(), done
        if is_save:
          _save(ckpt, done, state, data_iter, cfg, workdir, trusted_before, force=stopping)
          last_save_time = time.time()
        if stopping:
          interrupted, preempted = done < cfg.steps, stop_level == 2
          break
      if not interrupted:
        finished_before = start >= cfg.steps
        if not finished_before:
          _save(ckpt, done, state, data_iter, cfg, workdir, trusted_before)
        if eval_at != done:
          # A rerun of a finished run reuses the row already written (one process: with
          # several, all must take part in the evaluation, and the row is merged, not added).
          eval_metrics = writer.eval_row(done) if jax.process_count() == 1 else {}
          if not eval_metrics:
            eval_metrics = run_eval()
            writer.write(done, eval_metrics)
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
    say(f"Stopped at step {done}; checkpoint saved in {workdir}. Rerun the same command to "
        "resume.")
  else:
    say(_summary(eval_metrics, trainer.models, data.domains, data.num_eval_batches))
  say(f"Elapsed {_fmt_time(time.time() - t_start)}")
  return RunSummary(last_step=done, interrupted=interrupted, eval_metrics=eval_metrics,
                    workdir=workdir, preempted=interrupted and preempted)


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


def _progress_line(done, steps, m, sec_per_step, tokens_per_step, warmup_s=None,
                   warmup_steps=0) -> str:
  parts = [f"step {done:>{len(str(steps))}}/{steps}"]
  names = sorted((k[:-len("/loss")] for k in m if k.endswith("/loss") and "/" not in k[:-5]
                  and k != "delta/loss"), key=lambda n: (n != "routed", n != "baseline", n))
  losses = [f"{name} {m[f'{name}/loss']:.4f}" for name in names]
  if losses:
    parts.append("loss " + " ".join(losses))
  if "delta/loss" in m:
    parts.append(f"delta {m['delta/loss']:+.4f}")
  evals = [f"{name} {m[f'eval/{name}/perplexity']:.2f}" for name in names
           if f"eval/{name}/perplexity" in m]
  if evals:
    parts.append("eval ppl " + " ".join(evals))
  if warmup_s is not None:
    # The step was compiled before the loop (its memory line); the first steps still warm up.
    parts.append(f"warming up: first {warmup_steps} step(s) took {warmup_s:.1f}s; "
                 "throughput from the next line on")
  elif math.isfinite(sec_per_step):
    parts.append(f"{tokens_per_step / sec_per_step:,.0f} tok/s")
    if "perf/mfu" in m:
      parts.append(f"MFU {100 * m['perf/mfu']:.1f}%")
    parts.append(f"ETA {_fmt_time((steps - done) * sec_per_step)}")
  return " | ".join(parts)


def _summary(eval_metrics: dict, models, domains, total_batches: int) -> str:
  n = int(eval_metrics.get("eval/batches", total_batches))
  lines = [f"Held-out perplexity ({'all' if n == total_batches else n} of {total_batches} "
           "held-out batches):"]
  for name in [*models, PREFIX]:
    if f"eval/{name}/perplexity" not in eval_metrics:
      continue
    per_domain = ", ".join(f"{d} {eval_metrics[f'eval/{name}/{d}/perplexity']:.2f}"
                           for d in domains if f"eval/{name}/{d}/perplexity" in eval_metrics)
    lines.append(f"  {name:<13} {eval_metrics[f'eval/{name}/perplexity']:9.2f}   ({per_domain})")
  if "eval/delta/loss" in eval_metrics:
    ratio = math.exp(eval_metrics["eval/delta/loss"])
    lines.append(f"  routed / baseline perplexity = {ratio:.4f} ({100 * (ratio - 1):+.2f}%)")
  if f"eval/{PREFIX}/perplexity" in eval_metrics:
    lines.append(f"  ({PREFIX}: the sequence_mean router given only the prefix, as it would "
                 "be when generating; its distance to routed is the future-token leak)")
  return "\n".join(lines)
