"""launch/interpret.py on a trained workdir: every section filled, plots that open; and the
report.md text and figure names of committed report.json files, unchanged."""

import json
import math
import os
import subprocess
import sys
import types

import matplotlib.image
import numpy as np
import pytest

from dirroute_jax.analysis import plots, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("causality", "ablation", "factual", "induction", "regimes", "directions", "steering")


@pytest.mark.slow
def test_interpret_writes_json_markdown_and_plots(trained_workdir, tmp_path):
  out = tmp_path / "report"
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "interpret.py"),
      f"--workdir={trained_workdir}",
      f"--out={out}",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(out / "report.json"))
  for section in SECTIONS:
    assert report[section], section
  assert report["causality"]["all_causal"] is True
  assert report["causality"]["leak"]["applies"] is False  # causal_mean: nothing to measure
  # The corpus and tokenizer the numbers are on, and the token counts, as at training time.
  data = report["data"]
  assert data["same_as_training"] is True
  assert data["evaluated_on"]["corpus"] == data["trained_on"]["corpus"]
  assert data["evaluated_on"]["tokens"]["validation"]["prose"] > 0
  assert report["ablation"]["control"]["baseline_invariant"] is True
  md = open(out / "report.md").read()
  for section in SECTIONS:
    assert f"## {section}" in md
  assert "| routed | CAUSAL | causal_mean |" in md
  assert f"Corpus fingerprint `{data['evaluated_on']['corpus']}`" in md
  # Each plot opens, has content (not a blank canvas) and is linked from report.md.
  pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
  assert {
    "ablation_layers.png",
    "factual_dla.png",
    "induction_heads.png",
    "regimes_variance.png",
    "directions_cosine.png",
  } <= set(pngs)
  for png in pngs:
    image = matplotlib.image.imread(out / png)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert np.std(image[..., :3]) > 0.05
    assert f"]({png})" in md


@pytest.mark.slow
def test_interpret_missing_workdir_is_a_clear_error(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "interpret.py"),
      f"--workdir={tmp_path / 'nothing'}",
      f"--out={tmp_path / 'out'}",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  assert proc.returncode != 0
  assert "cannot load" in proc.stderr and "Traceback" not in proc.stderr


# --- Rendering a stored report.json: report.md text and figure names are a persisted format.

GOLDEN = os.path.join(REPO, "tests", "golden")


def _namespace(d: dict):
  return types.SimpleNamespace(
    **{k: _namespace(v) if isinstance(v, dict) else v for k, v in d.items()}
  )


def _committed_report(name: str) -> dict:
  """A committed report.json, with the factual fields that report predates filled in."""
  with open(
    os.path.join(REPO, "tests", "golden", "reports", name.replace("/", "_") + ".json")
  ) as f:
    r = json.load(f)
  for m in r.get("factual", {}).get("models", {}).values():
    for cond in ("as_trained", "routing_off"):
      m["summary"][cond].setdefault("num_at_chance", 0)
    for p in m["prompts"]:
      for cond in ("as_trained", "routing_off"):
        p[cond].setdefault("at_chance", False)
      p.setdefault("chance_logprob", -10.0)
      p.setdefault("target_tokens", [p["target"]])
      p.setdefault("subject_token", "?")
  return r


def _skipped_sections(r: dict) -> dict[str, dict]:
  """Skipped results (one held-out domain; no routed model) to render in place of `r`'s."""
  if "regimes" not in r:
    return {}
  reason = "skipped: one domain (prose)"
  return {
    "regimes": {
      "protocol": {"domains": ["prose"]},
      "paper": r["regimes"]["paper"],
      "skipped": reason,
      "models": {"routed": reason, "baseline": "n/a (no router)"},
    },
    "steering": {"skipped": "no model with routing in this workdir"},
  }


def _render(r: dict) -> tuple[str, list[str]]:
  """report.md of `r` and the names of the figures drawn for it."""
  figs = report.make_figures(r)
  try:
    keys = sorted(figs)
  finally:
    for fig in figs.values():
      plots.plt.close(fig)
  run = types.SimpleNamespace(cfg=_namespace(r["config"]))
  md = report.render_markdown(r, run, {k: f"/elsewhere/{k}.png" for k in keys})
  return md, keys


@pytest.mark.parametrize("name", ["small/causal_mean", "sd_tiny"])
def test_rendering_a_stored_report_is_unchanged(name):
  r = _committed_report(name)
  texts = []
  for variant in [r] + [
    {**r, section: skipped} for section, skipped in _skipped_sections(r).items()
  ]:
    md, keys = _render(variant)
    texts += [md, "figures: " + " ".join(keys)]
  got = "\n\n=====\n\n".join(texts)
  path = os.path.join(GOLDEN, name.replace("/", "_") + ".md")
  if os.environ.get("REGENERATE_GOLDEN"):  # after an intended change of the report's text
    with open(path, "w") as f:
      f.write(got)
  with open(path) as f:
    assert got == f.read()


# --- Typed results: every committed report.json loads into the sections' result types, and
# their stored form round-trips.

# The reports committed under results/, each beside the report.md it was written with.
RESULTS = [
  "results/seeds/causal_mean/seed_0/report",
  "results/seeds/sequence_mean/seed_0/report",
  "results/sd_tiny/report",
  "results/leak_by_position/sequence_mean/seed_5",
  "results/leak_by_position/causal_mean/seed_5",
]


def _load(name: str) -> dict:
  if name.startswith("results/"):
    with open(os.path.join(REPO, name, "report.json")) as f:
      return json.load(f)
  return _committed_report(name)


@pytest.mark.parametrize("name", ["small/causal_mean", "small/sequence_mean", "sd_tiny"] + RESULTS)
def test_committed_reports_load_typed_and_round_trip(name):
  from dirroute_jax.analysis import result

  stored = _load(name)
  typed = report.load_sections(stored)
  for section, s in report.SECTIONS.items():
    if section not in stored:
      continue
    assert isinstance(typed[section], s.result_type), section
    again = json.loads(json.dumps(result.to_json(typed[section])))
    assert result.to_json(s.load(again)) == again, section  # lossless from here on
    # Claim rows and markdown read typed fields: a renamed field fails here, not in a run.
    s.claim_rows(typed[section], typed)
    assert s.markdown(typed[section]) == s.markdown(stored[section])


def test_a_stored_section_missing_a_field_names_it():
  from dirroute_jax.analysis import result

  stored = _committed_report("small/causal_mean")["ablation"]
  del stored["models"]["routed"]["worst_layer"]
  with pytest.raises(result.SchemaError, match=r"models\['routed'\].*worst_layer"):
    report.SECTIONS["ablation"].load(stored)


def test_skips_are_typed():
  from dirroute_jax.analysis import result

  skip = result.Skipped("no model with routing in this workdir")
  assert result.to_json(skip) == {"skipped": skip.reason}
  assert report.SECTIONS["causality"].load({"skipped": skip.reason}) == skip
  assert result.from_json(float | None, "n/a (one layer)") is None  # older reports' "n/a"
  assert math.isinf(result.from_json(float, "inf")) and result.to_json(math.inf) == "inf"


@pytest.mark.parametrize("path", RESULTS)
def test_committed_results_render_their_report_md(path):
  """Every section read back typed from a committed report.json renders the report.md that was
  written beside it, byte for byte."""
  md, _ = _render(_load(path))
  with open(os.path.join(REPO, path, "report.md")) as f:
    assert md == f.read()
