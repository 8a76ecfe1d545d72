"""Report figures and token labels: integer ticks on layer / head / k axes, no label over
another panel, no legend over data, and readout tokens that are part of a UTF-8 character
shown as their bytes rather than U+FFFD."""

import json
import os

import pytest

from dirroute_jax.analysis import plots, report
from dirroute_jax.analysis.tokens import show_bytes, token_label
from dirroute_jax.data import tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A real report (configs/small.py, causal_mean, from an earlier version), kept as test input.
REPORT = os.path.join(REPO, "tests", "golden", "reports", "small_causal_mean.json")


@pytest.fixture(scope="module")
def figures():
  with open(REPORT) as f:
    figs = report.make_figures(json.load(f))
  for fig in figs.values():
    fig.canvas.draw()  # lay out, so window extents are final
  yield figs
  for fig in figs.values():
    plots.plt.close(fig)


def _is_integer_axis(label: str) -> bool:
  return label.startswith(("layer", "head", "first k layers"))


def test_integer_axes_have_integer_ticks(figures):
  checked = []
  for key, fig in figures.items():
    for ax in fig.axes:
      for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if not _is_integer_axis(axis.get_label_text()):
          continue
        lo, hi = sorted((lo, hi))
        # The labels, not the positions: grouped bars put "0", "1", ... between two bars.
        shown = [
          t.get_text().replace("\u2212", "-")
          for loc, t in zip(axis.get_ticklocs(), axis.get_ticklabels())
          if lo <= loc <= hi
        ]
        assert shown and all(s.lstrip("-").isdigit() for s in shown), (key, shown)
        checked.append(key)
  assert {
    "linearise_ppl",
    "induction_heads",
    "directions_cosine",
    "spectral_cascade",
    "ablation_layers",
  } <= set(checked)


def _overlaps(a, b) -> bool:
  return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_induction_heads_axis_labels_stay_off_other_panels(figures):
  fig = figures["induction_heads"]
  renderer = fig.canvas.get_renderer()
  panels = [ax for ax in fig.axes if ax.get_title()]  # not the colorbar
  assert len(panels) == 2
  for ax in panels:
    for label in (ax.xaxis.label, ax.yaxis.label):
      if not label.get_text():
        continue
      box = label.get_window_extent(renderer)
      for other in panels:
        if other is not ax:
          assert not _overlaps(box, other.get_window_extent(renderer)), label.get_text()
          for tick in other.get_yticklabels() + other.get_xticklabels():
            assert not _overlaps(box, tick.get_window_extent(renderer)), label.get_text()


def test_spectral_cascade_legend_covers_no_point(figures):
  fig = figures["spectral_cascade"]
  ax = fig.axes[0]
  legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
  for line in ax.lines:
    xy = line.get_transform().transform(line.get_xydata())
    r = line.get_markersize() * fig.dpi / 72 / 2  # a marker covered even in part is hidden
    inside = (
      (xy[:, 0] >= legend.x0 - r)
      & (xy[:, 0] <= legend.x1 + r)
      & (xy[:, 1] >= legend.y0 - r)
      & (xy[:, 1] <= legend.y1 + r)
    )
    assert not inside.any(), line.get_label()


def test_show_bytes_marks_only_incomplete_characters():
  assert show_bytes("a — b".encode()) == "a — b"
  assert show_bytes(b" \xe2\x80") == " <0xE2><0x80>"  # the start of '—'
  assert show_bytes(b"\x94x") == "<0x94>x"  # its last byte, then a character
  assert show_bytes(b"\xe2\x80\x94\xe2") == "—<0xE2>"


def _check_labels(tok, text):
  ids = tok.encode(text)
  assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
  labels = [token_label(tok, i) for i in ids]
  assert not any("\ufffd" in s for s in labels), labels
  return labels


def test_token_labels_of_a_byte_level_bpe_show_bytes_not_replacement_chars():
  text = "naïve café — “quoted” 東京"
  tok = tokenizers.BPETokenizer.train([text, "plain words here"] * 20, vocab_size=280)
  _check_labels(tok, text)
  for i in range(tok.vocab_size):  # every whole-character token reads as it decodes
    if "\ufffd" not in tok.decode([i]):
      assert token_label(tok, i) == tok.decode([i]), i
  assert token_label(tok, tok.eos_id) == tokenizers.ENDOFTEXT


def test_token_labels_of_gpt2_and_bytes():
  gpt2 = tokenizers.GPT2Tokenizer()
  labels = _check_labels(gpt2, "a “b”")
  assert "<0xE2><0x80>" in "".join(labels)  # GPT-2 splits the quote mark into pieces
  byte = tokenizers.ByteTokenizer()
  assert _check_labels(byte, "é") == ["<0xC3>", "<0xA9>"]
  assert token_label(byte, byte.eos_id) == tokenizers.ENDOFTEXT
