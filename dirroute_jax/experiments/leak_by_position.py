"""The router's future leak, position by position, with intervals over seeds.

Input: the causality section (`launch/interpret.py --analyses=causality`) of seed runs of
launch/seeds.py under both poolings, laid out as ROOT/<pooling>/seed_<s>/report.json. Its
`ppl_by_position` gives every model's held-out perplexity within buckets of positions in the
window (and, for sequence_mean, the prefix-only twin's).

Per bucket and seed, each estimate is a paired log-perplexity difference, with the seeds'
t-interval, p values and verdict of experiments/seeds.py:
  - retrained-pooling difference (primary): the sequence_mean routed model's gain over the
    baseline minus the causal_mean routed model's gain; under one seed both poolings train the
    same baseline, so it is log PPL(causal routed) - log PPL(sequence_mean routed);
  - prefix-only vs baseline (secondary): the sequence_mean routed parameters pooling only the
    prefix, against the baseline (caveat: prefix means over few tokens are router inputs the
    model never saw in training);
  - the causal_mean routed model vs the baseline, for scale.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.causality import Causality
from dirroute_jax.analysis.markdown import table
from dirroute_jax.experiments import seeds as seeds_lib
from dirroute_jax.model.variants import PREFIX_ONLY as PREFIX

# (label, pooling of a, model a, pooling of b, model b): "a lowers PPL relative to b".
ESTIMATES = (
  ("retrained pooling: sequence_mean routed vs causal_mean routed", "sequence_mean", "routed",
   "causal_mean", "routed"),
  ("prefix-only routing vs baseline (sequence_mean)", "sequence_mean", PREFIX,
   "sequence_mean", "baseline"),
  ("causal_mean routed vs baseline", "causal_mean", "routed", "causal_mean", "baseline"),
)  # fmt: skip


def load(root: str, seeds: Iterable[int]) -> dict[str, dict[int, dict]]:
  """{pooling: {seed: ppl_by_position}} from ROOT/<pooling>/seed_<s>/report.json."""
  out = {}
  for pooling in seeds_lib.POOLINGS:
    out[pooling] = {}
    for s in seeds:
      path = os.path.join(root, pooling, f"seed_{s}", "report.json")
      if not os.path.exists(path):
        raise FileNotFoundError(
          f"{path} missing: run launch/interpret.py --analyses=causality on that seed's "
          "workdir with --out there."
        )
      with open(path) as f:
        causality = result_lib.from_json(Causality, json.load(f)["causality"], path)
      if not causality.ppl_by_position:
        raise ValueError(f"{path}: its causality section has no ppl_by_position (older report).")
      out[pooling][int(s)] = causality.ppl_by_position
  return out


def aggregate(by_pooling: dict[str, dict[int, dict]]) -> dict:
  """Every ESTIMATE per position bucket over the seeds both poolings have, and the baseline
  pairing check."""
  seeds = sorted(set.intersection(*(set(r) for r in by_pooling.values())))
  buckets = list(next(iter(by_pooling["sequence_mean"][seeds[0]].values())))
  estimates = {}
  for label, pa, a, pb, b in ESTIMATES:
    estimates[label] = {
      bucket: seeds_lib.interval_entry(
        {
          s: math.log(by_pooling[pb][s][b][bucket]) - math.log(by_pooling[pa][s][a][bucket])
          for s in seeds
        }
      )
      for bucket in buckets
    }
  # Pairing check: under one seed both poolings train the same baseline (0 when paired).
  gap = max(
    abs(
      math.log(by_pooling["sequence_mean"][s]["baseline"][k])
      - math.log(by_pooling["causal_mean"][s]["baseline"][k])
    )
    for s in seeds
    for k in buckets
  )
  return {"seeds": seeds, "buckets": buckets, "estimates": estimates, "baseline_gap": gap}


def to_markdown(res: dict) -> str:
  seeds = ", ".join(str(s) for s in res["seeds"])
  rows = [
    [label, bucket] + seeds_lib.row_cells(entry)
    for label, by_bucket in res["estimates"].items()
    for bucket, entry in by_bucket.items()
  ]
  head = ["a vs b", "positions", "mean PPL reduction 1 - PPL_a/PPL_b"]
  return "\n".join(
    [
      f"## The leak by position in the window (seeds {seeds})",
      "",
      "Per seed, log PPL_b - log PPL_a within the positions (token-weighted over the whole "
      "held-out split); mean over seeds with the seeds' 95% t-interval, p values and verdict "
      "(experiments/seeds.py). Positive: a has the lower perplexity.",
      "",
      table(head + list(seeds_lib.INTERVAL_COLUMNS), rows),
      "",
      f"Check: each seed's baseline under the two poolings differs by at most "
      f"{res['baseline_gap']:.3g} in log-perplexity in any bucket (0 when paired as claimed).",
      "",
    ]
  )


def write_outputs(root: str, seeds: Iterable[int]) -> dict[str, str]:
  """leak_by_position.json and leak_by_position.md in ROOT, from its reports of `seeds`."""
  res = aggregate(load(root, seeds))
  paths = {
    "json": os.path.join(root, "leak_by_position.json"),
    "markdown": os.path.join(root, "leak_by_position.md"),
  }
  with open(paths["json"], "w") as f:
    json.dump(res, f, indent=1)
  with open(paths["markdown"], "w") as f:
    f.write(to_markdown(res))
  return paths
