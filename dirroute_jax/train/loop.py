"""The training loop: data -> joint step -> metrics, evaluation and checkpoints, with exact
resume from the latest complete checkpoint in the workdir."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

from etils import epath
import jax
import numpy as np

from dirroute_jax.config import ConfigError, validate_config
from dirroute_jax.data import tokenizers
from dirroute_jax.data.pipeline import make_data
from dirroute_jax.model import attention
from dirroute_jax.train import checkpoint, flops, sharding, step as step_lib
from dirroute_jax.train.evaluate import evaluate, to_global
from dirroute_jax.train.metrics import MetricsWriter
from dirroute_jax.train.samples import config_hparams, write_eval_samples


DATA_FINGERPRINT = "data_fingerprint.json"  # which corpus and tokenizer the run trained on


@dataclasses.dataclass
class RunSummary:
  last_step: int
  interrupted: bool
  eval_metrics: dict
  workdir: str


class _StopFlag:
  """Ctrl-C ends the current step, saves and exits; a second Ctrl-C aborts at once."""

  def __init__(self):
    self.stop = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      if self.stop:
        raise KeyboardInterrupt
      self.stop = True
      print("\nInterrupted: finishing this step, saving a checkpoint, then exiting "
            "(Ctrl-C again to abort without saving).", flush=True)
    try:
      self._previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def _check_workdir(workdir: str) -> None:
  try:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"cannot write to --workdir={workdir!r} ({e.strerror or e}); choose a "
                      "directory you can write to.") from e


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def _check_finite(metrics: dict, step: int, ckpt: checkpoint.Checkpointer, workdir: str):
  bad = [k for k, v in metrics.items() if k.endswith("/loss") and not math.isfinite(float(v))]
  if bad:
    ckpt.wait()
    last = ckpt.latest_step()
    raise FloatingPointError(
        f"non-finite {', '.join(bad)} at step {step}: training stopped without saving. "
        + (f"The last good checkpoint (step {last}) in {workdir} is intact; "
           if last is not None else "No checkpoint was written yet; ")
        + "lower optim.peak_lr or raise optim.warmup_steps, then rerun.")


def train(cfg, workdir: str, *, log=print) -> RunSummary:
  """Trains every model of `cfg.models` side by side; resumes from `workdir` if it holds a
  checkpoint. Returns the final held-out metrics."""
  validate_config(cfg)
  _check_workdir(workdir)
  t_start = time.time()
  is_main = jax.process_index() == 0
  say = log if is_main else (lambda *a, **k: None)
  if cfg.model.pooling == "sequence_mean" and "routed" in cfg.models:
    say("WARNING: pooling=sequence_mean is the paper's router and is NOT causal: every "
        "position's routing sees the whole sequence, future tokens included. Its perplexity "
        "is not comparable with a causal LM; use --config.model.pooling=causal_mean for that.")

  mesh = sharding.make_mesh(cfg.mesh)
  data = make_data(cfg, process_index=jax.process_index(), process_count=jax.process_count())
  if is_main:
    tokenizers.save_to_workdir(data.tokenizer, workdir)
    (epath.Path(workdir) / DATA_FINGERPRINT).write_text(json.dumps(
        {"corpus": data.stats.get("corpus_fingerprint"), "tokenizer": data.tokenizer.fingerprint}))
  trainer = step_lib.make_trainer(cfg, mesh)
  ckpt = checkpoint.Checkpointer(workdir, keep=cfg.checkpoint.keep,
                                 permanent_every=cfg.checkpoint.permanent_every)
  data_iter = data.train_iter(0)
  tokens_per_step = cfg.batch_size * cfg.seq_len
  # Model FLOPs of the whole set per step, convention in train/flops.py.
  flops_per_step = tokens_per_step * sum(
      flops.flops_per_token(mc, cfg.seq_len) for mc in step_lib.model_configs(cfg).values())
  peak = flops.peak_flops_per_device(jax.devices()[0].device_kind)

  with jax.set_mesh(mesh), _StopFlag() as stop:
    if ckpt.latest_step() is not None:
      state, start = ckpt.restore(trainer.abstract_state(), data_iter=data_iter,
                                  data_fallback=lambda s: data.seek(data_iter, s))
      say(f"Resumed from step {start} in {workdir}")
    else:
      state, start = trainer.init_state(jax.random.key(cfg.seed)), 0
    say(attention.attention_impl_summary(cfg.model))
    say(f"Training {', '.join(trainer.models)} for {cfg.steps} steps: batch {cfg.batch_size} x "
        f"{cfg.seq_len} tokens, {jax.device_count()} device(s), mesh {dict(mesh.shape)}, "
        f"tokenizer {data.tokenizer.name} "
        f"({data.stats['train_tokens']:,} train tokens)"
        + (f"; routed pooling {cfg.model.pooling}" if "routed" in trainer.models else ""))
    say(f"Metrics go to {os.path.join(workdir, 'metrics.jsonl')}, TensorBoard events to "
        f"{os.path.join(workdir, 'tensorboard')}, checkpoints to "
        f"{os.path.join(workdir, 'checkpoints')}")
    writer = MetricsWriter(workdir, resume_step=start, enabled=is_main)
    writer.hparams(config_hparams(cfg), [f"eval/{n}/perplexity" for n in trainer.models])
    eval_metrics, eval_at = {}, None

    def run_eval():
      return evaluate(trainer, state, data.eval_batches(cfg.eval_batches or None),
                      data.domains)

    last_log_time, last_log_step, done = time.time(), start, start
    step_times = []
    try:
      for done in range(start + 1, cfg.steps + 1):
        batch = to_global(trainer, next(data_iter))
        state, metrics = trainer.train_step(state, batch)
        is_log = done % cfg.log_every == 0 or done == cfg.steps or stop.stop
        is_eval = cfg.eval_every and done % cfg.eval_every == 0
        is_save = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or stop.stop
        if not (is_log or is_eval or is_save):
          continue
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, done, ckpt, workdir)
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
          ckpt.save(done, state, data_iter=data_iter, config=cfg, force=stop.stop)
        if stop.stop:
          break
      interrupted = stop.stop and done < cfg.steps
      if not interrupted:
        ckpt.save(done, state, data_iter=data_iter, config=cfg)  # no-op if already saved
        if eval_at != done:
          eval_metrics = run_eval()
          writer.write(done, eval_metrics)
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()

  if interrupted:
    say(f"Stopped at step {done}; checkpoint saved in {workdir}. Rerun the same command to "
        "resume.")
  else:
    say(_summary(eval_metrics, trainer.models, data.domains))
  say(f"Elapsed {_fmt_time(time.time() - t_start)}")
  return RunSummary(last_step=done, interrupted=interrupted, eval_metrics=eval_metrics,
                    workdir=workdir)


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
    parts.append(f"warming up: first {warmup_steps} step(s) took {warmup_s:.1f}s incl. "
                 "compile; throughput from the next line on")
  elif math.isfinite(sec_per_step):
    parts.append(f"{tokens_per_step / sec_per_step:,.0f} tok/s")
    if "perf/mfu" in m:
      parts.append(f"MFU {100 * m['perf/mfu']:.1f}%")
    parts.append(f"ETA {_fmt_time((steps - done) * sec_per_step)}")
  return " | ".join(parts)


def _summary(eval_metrics: dict, models, domains) -> str:
  lines = ["Held-out perplexity:"]
  for name in models:
    if f"eval/{name}/perplexity" not in eval_metrics:
      continue
    per_domain = ", ".join(f"{d} {eval_metrics[f'eval/{name}/{d}/perplexity']:.2f}"
                           for d in domains if f"eval/{name}/{d}/perplexity" in eval_metrics)
    lines.append(f"  {name:<9} {eval_metrics[f'eval/{name}/perplexity']:9.2f}   ({per_domain})")
  if "eval/delta/loss" in eval_metrics:
    ratio = math.exp(eval_metrics["eval/delta/loss"])
    lines.append(f"  routed / baseline perplexity = {ratio:.4f} ({100 * (ratio - 1):+.2f}%)")
  return "\n".join(lines)
