"""Text sources behind one small interface: documents with a split and a domain label.

`data.source` picks one of:
- "embedded": the built-in corpus (corpus.py), domains code / prose / docs;
- "tfds":     any prepared TFDS dataset read with `tfds.data_source` (array_record files, no
              TensorFlow), e.g. a user's lm1b or c4 under `data.tfds_data_dir`;
- "files":    local `.txt` (one document per file), `.jsonl` and `.parquet` (field / column
              `data.text_key`) matched by the glob(s) `data.files` (comma-separated); this is
              how FineWeb parquet shards come in.
("synthetic" has no text and is handled in pipeline.py.)

The held-out split of a source without one is chosen by a hash of each document's id
(`corpus.doc_hash`), so it is the same on every run and every host.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Callable, Iterator

from dirroute_jax.data import corpus as corpus_lib

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class TextCorpus:
  """Documents of a source. `iter_docs()` yields (split, domain_id, text) over both splits.

  `fingerprint` changes whenever the text could change; it keys every cache built from it.
  """
  name: str
  fingerprint: str
  domains: tuple[str, ...]
  iter_docs: Callable[[], Iterator[tuple[str, int, str]]]

  def texts(self, split: str = "train") -> Iterator[str]:
    return (text for s, _, text in self.iter_docs() if s == split)


def make_corpus(data_cfg, cache_dir: str) -> TextCorpus:
  source = data_cfg.source
  eval_fraction = float(data_cfg.eval_fraction)
  max_docs = int(data_cfg.get("max_docs", 0))
  if source == "embedded":
    return embedded_corpus(
        cache_dir, eval_fraction,
        int(data_cfg.get("max_bytes_per_domain", corpus_lib.DEFAULT_MAX_BYTES_PER_DOMAIN)))
  if source == "tfds":
    return tfds_corpus(data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.tfds_text_key,
                       eval_fraction, max_docs)
  if source == "files":
    return files_corpus(data_cfg.files, data_cfg.text_key, eval_fraction, max_docs)
  raise ValueError(f"data.source={source!r} is unknown; use one of "
                   "('embedded', 'tfds', 'files', 'synthetic').")


def embedded_corpus(cache_dir: str, eval_fraction: float, max_bytes_per_domain: int) -> TextCorpus:
  ec = corpus_lib.load_embedded(cache_dir, eval_fraction=eval_fraction,
                                max_bytes_per_domain=max_bytes_per_domain)

  def iter_docs():
    for split in SPLITS:
      src = ec.sources[split]
      for i in range(len(src)):
        rec = src[i]
        yield split, int(rec["domain"]), _as_str(rec["text"])

  return TextCorpus("embedded", "embedded-" + ec.fingerprint, ec.domains, iter_docs)


def tfds_corpus(name: str, data_dir: str, text_key: str, eval_fraction: float,
                max_docs: int = 0) -> TextCorpus:
  """A prepared TFDS dataset; eval = its `validation` (else `test`) split, else a hash hold-out."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not name:
    raise ValueError("data.source=tfds needs data.tfds_name (e.g. lm1b) and "
                     "data.tfds_data_dir (the directory the dataset was prepared into).")
  try:
    sources = tfds.data_source(name, data_dir=data_dir or None, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"Could not read TFDS dataset {name!r} from data_dir={data_dir or '~/tensorflow_datasets'}"
        f" ({type(e).__name__}: {e}). It must be prepared in array_record format first, e.g. "
        f"`tfds build {name} --data_dir=DIR --file_format=array_record` on a machine with "
        "TensorFlow, or bring the text as files (data.source=files).") from e
  if "train" not in sources:
    raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {sorted(sources)}).")
  eval_split = next((s for s in ("validation", "test") if s in sources), None)
  first = sources["train"][0] if len(sources["train"]) else {}
  if text_key not in first:
    raise ValueError(f"TFDS dataset {name!r} has no feature data.tfds_text_key={text_key!r}; "
                     f"its features are {sorted(first)}.")
  info = sources["train"].dataset_info
  fp = _hash(name, data_dir, str(info.version), text_key, eval_fraction, max_docs,
             *(f"{s}:{len(src)}" for s, src in sorted(sources.items())))

  def iter_docs():
    train = sources["train"]
    for i in range(len(train) if not max_docs else min(max_docs, len(train))):
      heldout = eval_split is None and corpus_lib.doc_hash(f"{name}:{i}") < eval_fraction
      yield ("validation" if heldout else "train"), 0, _as_str(train[i][text_key])
    if eval_split is not None:
      src = sources[eval_split]
      for i in range(len(src) if not max_docs else min(max_docs, len(src))):
        yield "validation", 0, _as_str(src[i][text_key])

  return TextCorpus(f"tfds:{name}", "tfds-" + fp, (name.split("/")[0].split(":")[0],), iter_docs)


def files_corpus(patterns: str, text_key: str, eval_fraction: float,
                 max_docs: int = 0) -> TextCorpus:
  """Local files; every document is held out or not by the hash of "path:row"."""
  if not patterns:
    raise ValueError("data.source=files needs data.files, a glob of .txt/.jsonl/.parquet files "
                     "(e.g. --config.data.files='/data/fineweb/*.parquet').")
  paths = sorted({p for pat in patterns.split(",") if pat.strip()
                  for p in glob.glob(os.path.expanduser(pat.strip()), recursive=True)
                  if os.path.isfile(p)})
  if not paths:
    raise ValueError(f"data.files={patterns!r} matched no files (searched from {os.getcwd()}). "
                     "Check the path, quote the glob so the shell does not expand it, and use "
                     "'**' with a directory prefix for recursive matches.")
  bad = [p for p in paths if not p.endswith(tuple(_READERS))]
  if bad:
    raise ValueError(f"data.files matched files of unsupported type: {bad[:3]}; "
                     f"supported: {sorted(_READERS)}.")
  stats = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
  fp = _hash(text_key, eval_fraction, max_docs, *map(str, stats))

  def iter_docs():
    n = 0
    for path in paths:
      reader = next(r for ext, r in _READERS.items() if path.endswith(ext))
      for row, text in enumerate(reader(path, text_key)):
        heldout = corpus_lib.doc_hash(f"{os.path.basename(path)}:{row}") < eval_fraction
        yield ("validation" if heldout else "train"), 0, text
        n += 1
        if max_docs and n >= max_docs:
          return

  return TextCorpus(f"files:{patterns}", "files-" + fp, ("files",), iter_docs)


def _read_txt(path: str, text_key: str) -> Iterator[str]:
  del text_key
  with open(path, encoding="utf-8", errors="replace") as f:
    yield f.read()


def _read_jsonl(path: str, text_key: str) -> Iterator[str]:
  # Bytes, decoded line by line: an error then names the right line, not a decoder chunk's.
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}"
                         "); re-encode the file as UTF-8 or drop that line.") from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e.msg} at column {e.colno}); each line "
                         "of a .jsonl file must be one JSON object.") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{where} is a JSON {type(rec).__name__}, not an object; each line "
                         f"must be an object with a {text_key!r} field.")
      if text_key not in rec:
        raise ValueError(f"{where} has no field data.text_key={text_key!r}; its fields "
                         f"are {sorted(rec)}. Set --config.data.text_key to the text field.")
      if not isinstance(rec[text_key], str):
        raise ValueError(f"{where}: field {text_key!r} is {json.dumps(rec[text_key])[:40]}, "
                         "not a string; fix or drop that line.")
      yield rec[text_key]


def _read_parquet(path: str, text_key: str) -> Iterator[str]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  f = pq.ParquetFile(path)
  names = f.schema_arrow.names
  if text_key not in names:
    raise ValueError(f"{path} has no column data.text_key={text_key!r}; its columns are "
                     f"{names}. Set --config.data.text_key to the text column.")
  for batch in f.iter_batches(batch_size=1024, columns=[text_key]):
    for text in batch.column(0).to_pylist():
      yield text or ""


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def _as_str(x) -> str:
  return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)


def _hash(*parts) -> str:
  return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
