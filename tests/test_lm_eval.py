"""The lm-evaluation-harness adapter (dirroute_jax/export/lm_eval_adapter.py) and
launch/lm_eval.py, offline: its scores equal a direct forward for every kind of model and
routing intervention, within a few compiled shapes; a local multiple-choice task
(tests/lm_eval_tasks) runs end to end. Skipped without lm-eval (the `.[eval]` extra)."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from dirroute_jax.data.tokenizers import ByteTokenizer  # noqa: E402
from dirroute_jax.export import lm_eval_adapter as adapter  # noqa: E402
from dirroute_jax.export import lm_eval_compare  # noqa: E402
from dirroute_jax.model import interventions as iv  # noqa: E402
from dirroute_jax.model import sampling  # noqa: E402
from dirroute_jax.model.transformer import build_model, forward, init_params  # noqa: E402
from dirroute_jax.model.variants import model_configs  # noqa: E402
from dirroute_jax.train.evaluate import prefix_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(REPO, "tests", "lm_eval_tasks")
ATOL = 1e-4

PAIRS = [
  ("def add(a, b):\n    return", " a + b"),
  ("To be, or not to", " be"),
  ("x" * 70, " yz"),
  ("The dataset contains images of", " handwritten digits"),
  ("", "Hello there"),
  ("import numpy as", " np"),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run(tiny_cfg, pooling="causal_mean"):
  """Random tiny routed/baseline/matched models on the bytes tokenizer, max length 64."""
  cfg = tiny_cfg
  cfg.models, cfg.model.vocab_size, cfg.seq_len = "routed,baseline,matched", 257, 64
  cfg.model.pooling = pooling
  models = {name: build_model(mc) for name, mc in model_configs(cfg).items()}
  params = {name: init_params(m, jax.random.key(i)) for i, (name, m) in enumerate(models.items())}
  return types.SimpleNamespace(
    path="random", step=0, cfg=cfg, models=models, params=params, tokenizer=ByteTokenizer()
  )


def _requests(kind, args):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _direct_loglikelihood(model, params, interventions, context, continuation, max_length=64):
  """Sum of log p(continuation | context), one unpadded forward per request."""
  tok = ByteTokenizer()
  return _direct_tokens(
    model,
    params,
    interventions,
    tok.encode(context) or [tok.eos_id],
    tok.encode(continuation),
    max_length,
  )


def _direct_tokens(model, params, interventions, ctx, cont, max_length=64):
  seq = (ctx + cont)[-(max_length + 1) :]
  logits = np.asarray(
    forward(model, params, np.asarray([seq[:-1]]), interventions=interventions)[0][0], np.float64
  )
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  targets = np.asarray(seq[1:])
  picked = logp[np.arange(len(targets)), targets]
  greedy = logits.argmax(-1) == targets
  n = len(cont)
  return picked[-n:].sum(), bool(greedy[-n:].all())


def test_registered_with_lm_eval():
  assert get_model("dirroute") is adapter.DirrouteLM


@pytest.mark.parametrize(
  "model, routing", [("routed", "as_trained"), ("routed", "0.5"), ("matched", "as_trained")]
)
def test_loglikelihood_equals_direct_forward(tiny_cfg, model, routing):
  run = _run(tiny_cfg)
  lm = adapter.DirrouteLM(run=run, model=model, routing=routing, batch_size=4)
  got = lm.loglikelihood(_requests("loglikelihood", PAIRS))
  interventions = {"as_trained": None, "0.5": iv.routing_fixed(run.cfg.model, 0.5)}[routing]
  for (ctx, cont), (lp, greedy) in zip(PAIRS, got):
    want_lp, want_greedy = _direct_loglikelihood(
      run.models[model], run.params[model], interventions, ctx, cont
    )
    assert lp == pytest.approx(want_lp, abs=ATOL) and greedy == want_greedy
  # Lengths 3..65 tokens: two padded buckets (32, 64) of batch_size rows, nothing else.
  assert lm.compiled_shapes == {(4, 32), (4, 64)}


def test_routing_changes_the_routed_scores_only(tiny_cfg):
  run = _run(tiny_cfg)
  reqs = _requests("loglikelihood", PAIRS)
  score = lambda **kw: [lp for lp, _ in adapter.DirrouteLM(run=run, **kw).loglikelihood(reqs)]
  off = score(model="routed", routing="off")
  assert score(model="routed") != pytest.approx(off, abs=1e-3)
  assert score(model="routed", routing="0") == pytest.approx(off, abs=ATOL)
  with pytest.raises(ValueError, match="needs a routed model"):
    adapter.DirrouteLM(run=run, model="baseline", routing="off")
  with pytest.raises(ValueError, match="as_trained, off, prefix"):
    adapter.DirrouteLM(run=run, model="routed", routing="sideways")
  with pytest.raises(ValueError, match="already prefix-only"):
    adapter.DirrouteLM(run=run, model="routed", routing="prefix")
  with pytest.raises(ValueError, match="has no model 'sd'"):
    adapter.DirrouteLM(run=run, model="sd")


def test_sequence_mean_as_trained_and_prefix_only(tiny_cfg):
  """As trained, the non-causal router pools the whole (unpadded) sequence; `prefix` is the
  same params in the causal_mean twin, which pads like any causal model."""
  run = _run(tiny_cfg, pooling="sequence_mean")
  reqs = _requests("loglikelihood", PAIRS[:4])
  as_trained = adapter.DirrouteLM(run=run, model="routed", batch_size=2)
  prefix = adapter.DirrouteLM(run=run, model="routed", routing="prefix", batch_size=2)
  twin = prefix_model(run.models["routed"].cfg)
  for (ctx, cont), (a, _), (p, _) in zip(
    PAIRS, as_trained.loglikelihood(reqs), prefix.loglikelihood(reqs)
  ):
    params = run.params["routed"]
    assert a == pytest.approx(
      _direct_loglikelihood(run.models["routed"], params, None, ctx, cont)[0], abs=ATOL
    )
    assert p == pytest.approx(_direct_loglikelihood(twin, params, None, ctx, cont)[0], abs=ATOL)
  assert all(T != 32 for _, T in as_trained.compiled_shapes)  # exact lengths, no bucket
  assert prefix.compiled_shapes <= {(2, 32), (2, 64)}


def test_loglikelihood_rolling_is_the_whole_text_after_eos(tiny_cfg):
  run = _run(tiny_cfg)
  lm = adapter.DirrouteLM(run=run, model="routed", batch_size=4)
  short, long = "A short text.", "".join(f"line {i}\n" for i in range(30))  # 210 bytes
  got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(short,), (long,)]))
  # A text within max_length: log p(text | EOS), one forward.
  want, _ = _direct_loglikelihood(run.models["routed"], run.params["routed"], None, "", short)
  assert got[0] == pytest.approx(want, abs=ATOL)
  # A longer one: disjoint windows of at most 64 predicted tokens, each token scored once.
  tok, total, toks = ByteTokenizer(), 0.0, ByteTokenizer().encode(long)
  for ctx, cont in map(
    adapter.lm_utils.make_disjoint_window,
    adapter.lm_utils.get_rolling_token_windows(toks, tok.eos_id, 64, 1),
  ):
    total += _direct_tokens(run.models["routed"], run.params["routed"], None, ctx, cont)[0]
  assert got[1] == pytest.approx(total, abs=1e-3)


def test_generate_until_is_the_kv_cache_sampler_batched(tiny_cfg):
  run = _run(tiny_cfg)
  lm = adapter.DirrouteLM(run=run, model="routed", batch_size=4)
  prompts = ["def ", "To be, or not to be", "import"]
  tok = ByteTokenizer()
  got = lm.generate_tokens([tok.encode(p) for p in prompts], 12)
  for p, new in zip(prompts, got):
    want = sampling.sample(
      run.models["routed"], run.params["routed"], tok.encode(p), max_new_tokens=12, temperature=0.0
    ).tokens
    if tok.eos_id in want:
      want = want[: want.index(tok.eos_id)]
    assert new == want
  # `until` cuts the text at the first occurrence of a stop string.
  stops = [tok.decode(new[3:5]) if len(new) >= 5 else "" for new in got]
  texts = lm.generate_until(
    _requests(
      "generate_until",
      [(p, {"until": [stop], "max_gen_toks": 12}) for p, stop in zip(prompts, stops)],
    )
  )
  for text, new, stop in zip(texts, got, stops):
    full = tok.decode(new)
    assert text == (full[: full.index(stop)] if stop else full)
  assert lm.compiled_shapes == {(4, 32 + 12)}  # one bucket: prompts of 4..19 tokens


def test_local_multiple_choice_task_through_lm_eval(tiny_cfg):
  """lm-eval's own evaluator on the shipped task: its acc is our argmax over the choices."""
  run = _run(tiny_cfg)
  result = lm_eval_compare.compare(
    run,
    ["dirroute_local_mc"],
    lm_eval_compare.parse_model_specs("routed,baseline"),
    include_path=TASKS,
    batch_size=8,
    log=lambda *a: None,
  )
  with open(os.path.join(TASKS, "local_mc.jsonl")) as f:
    docs = [json.loads(line) for line in f]
  for label in ("routed", "baseline"):
    lm = adapter.DirrouteLM(run=run, model=label, batch_size=8)  # tested against forward above
    correct = []
    for doc in docs:
      scores = lm.loglikelihood(
        _requests("loglikelihood", [(doc["question"], c) for c in doc["choices"]])
      )
      correct.append(float(np.argmax([lp for lp, _ in scores]) == doc["label"]))
    assert result["models"][label]["dirroute_local_mc"]["acc"] == pytest.approx(np.mean(correct))
    assert result["models"][label]["dirroute_local_mc"]["acc_stderr"] > 0
  paired = result["paired"]["routed"]["dirroute_local_mc"]["acc"]
  assert paired["n"] == len(docs) and paired["low"] <= paired["mean"] <= paired["high"]
  assert "routed - baseline [95% CI]" in lm_eval_compare.format_table(result)


def test_launcher_side_by_side_json(trained_workdir, tmp_path):
  out = tmp_path / "lm_eval.json"
  env = dict(
    os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"
  )
  env.pop("XLA_FLAGS", None)
  launch = [
    sys.executable,
    os.path.join(REPO, "launch", "lm_eval.py"),
    f"--workdir={trained_workdir}",
    "--tasks=dirroute_local_mc",
    f"--include_path={TASKS}",
    f"--out={out}",
    "--batch_size=8",
  ]
  done = subprocess.run(
    launch + ["--models=routed,routed:off,baseline"], capture_output=True, text=True, env=env
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "| task | metric | routed | routed:off | baseline |" in done.stdout
  saved = json.loads(out.read_text())
  assert set(saved["paired"]) == {"routed", "routed:off"} and saved["step"] == 80
  bad = subprocess.run(
    launch + ["--models=routed,baseline:off"], capture_output=True, text=True, env=env
  )
  assert bad.returncode == 2 and "needs a routed model" in bad.stderr
