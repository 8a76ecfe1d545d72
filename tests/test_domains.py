"""Your own data with domains: `domain=glob` entries and a per-row domain field for `files`,
`domain=name` entries and a clear not-prepared error for `tfds`, and the `regimes` analysis
skipped with a reason when there is only one domain."""

import json
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data import DOCS, DirrouteTestText, _cfg

from dirroute_jax.analysis import regimes, report, result
from dirroute_jax.config import default_model_config
from dirroute_jax.data import pipeline


def _domains_seen(data):
  seen = set()
  for batch in data.eval_batches():
    seen |= {data.domains[d] for d in batch["domain"] if d >= 0}
  return seen


def test_files_domain_per_glob(tmp_path):
  (tmp_path / "py").mkdir()
  (tmp_path / "books").mkdir()
  for i, d in enumerate(DOCS[:20]):
    (tmp_path / "py" / f"{i:02d}.txt").write_text("def f(): return " + d)
  (tmp_path / "books" / "b.jsonl").write_text(
    "".join(json.dumps({"text": "Once upon a time " + d}) + "\n" for d in DOCS[20:])
  )
  cfg = _cfg(
    tmp_path / "cache",
    source="files",
    eval_fraction=0.3,
    files=f"code={tmp_path}/py/*.txt, prose={tmp_path}/books/*.jsonl",
  )
  data = pipeline.make_data(cfg)
  assert data.domains == ("code", "prose")
  splits = data.stats["splits"]
  assert splits["train"]["code"]["docs"] + splits["validation"]["code"]["docs"] == 20
  assert splits["train"]["prose"]["docs"] + splits["validation"]["prose"]["docs"] == 20
  assert _domains_seen(data) == {"code", "prose"}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_files_domain_field_per_row(tmp_path, kind):
  labels = [("news" if i % 2 else "web") if i < 36 else None for i in range(len(DOCS))]
  if kind == "jsonl":
    rows = [{"text": d, **({"source": l} if l else {})} for d, l in zip(DOCS, labels)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  else:
    pq.write_table(pa.table({"text": DOCS, "source": labels}), tmp_path / "a.parquet")
  cfg = _cfg(
    tmp_path / "cache",
    source="files",
    files=f"mixed={tmp_path}/a.{kind}",
    domain_key="source",
    eval_fraction=0.3,
  )
  data = pipeline.make_data(cfg)
  assert data.domains == ("mixed", "news", "web")  # rows without the field keep the glob's
  splits = data.stats["splits"]
  docs = {d: sum(splits[s].get(d, {}).get("docs", 0) for s in splits) for d in data.domains}
  assert docs == {"news": 18, "web": 18, "mixed": 4}


def test_unlabelled_files_are_one_domain(tmp_path):
  for i, d in enumerate(DOCS):
    (tmp_path / f"{i:02d}.txt").write_text(d)
  data = pipeline.make_data(_cfg(tmp_path / "cache", source="files", files=f"{tmp_path}/*.txt"))
  assert data.domains == ("files",)


def test_tfds_one_domain_per_named_dataset(tmp_path):
  DirrouteTestText(
    data_dir=str(tmp_path / "tfds"), file_format="array_record"
  ).download_and_prepare()
  cfg = _cfg(
    tmp_path / "cache",
    source="tfds",
    tfds_data_dir=str(tmp_path / "tfds"),
    tfds_text_key="sentence",
    tfds_name="a=dirroute_test_text,b=dirroute_test_text",
  )
  data = pipeline.make_data(cfg)
  assert data.domains == ("a", "b")
  assert (
    data.stats["splits"]["train"]["a"]["docs"] == data.stats["splits"]["train"]["b"]["docs"] == 30
  )


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
  cfg = _cfg(
    tmp_path / "cache", source="tfds", tfds_name="lm1b", tfds_data_dir=str(tmp_path / "empty")
  )
  with pytest.raises(
    ValueError,
    match=r"not prepared in .*tfds build lm1b --data_dir=.*"
    r"--file_format=array_record",
  ):
    pipeline.make_data(cfg)


def test_regimes_with_one_domain_is_skipped_with_a_reason():
  model_cfg = default_model_config()
  run = types.SimpleNamespace(
    models={"routed": types.SimpleNamespace(cfg=model_cfg)},
    data=types.SimpleNamespace(domains=("files",)),
  )
  out = regimes.regimes(run)
  assert out.reason.startswith("skipped: routing regimes compare domains")
  assert "domain=glob" in out.reason
  assert report.section_markdown("regimes", out) == out.reason
  assert report.make_figures({"regimes": out}) == {}
  stored = json.loads(json.dumps(result.to_json(out)))
  assert stored == {"skipped": out.reason} and report.SECTIONS["regimes"].load(stored) == out
