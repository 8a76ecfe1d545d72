"""launch/interpret.py on a trained workdir: every section filled, plots that open."""

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("causality", "ablation", "factual", "induction", "regimes", "directions",
            "steering")


def test_interpret_writes_json_markdown_and_plots(trained_workdir, tmp_path):
  out = tmp_path / "report"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "interpret.py"),
       f"--workdir={trained_workdir}", f"--out={out}"],
      capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
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
  assert {"ablation_layers.png", "factual_dla.png", "induction_heads.png",
          "regimes_variance.png", "directions_cosine.png"} <= set(pngs)
  for png in pngs:
    image = matplotlib.image.imread(out / png)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert np.std(image[..., :3]) > 0.05
    assert f"]({png})" in md


def test_interpret_missing_workdir_is_a_clear_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "interpret.py"),
       f"--workdir={tmp_path / 'nothing'}", f"--out={tmp_path / 'out'}"],
      capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode != 0
  assert "cannot load" in proc.stderr and "Traceback" not in proc.stderr
