"""Text sources behind one small interface: documents with a split and a domain label.

`data.source` picks one of:
- "embedded": the built-in corpus (corpus.py), domains code / prose / docs;
- "tfds":     any prepared TFDS dataset read with `tfds.data_source` (array_record files, no
              TensorFlow), e.g. a user's lm1b or c4 under `data.tfds_data_dir`;
- "files":    local `.txt` (one document per file), `.jsonl` and `.parquet` (field / column
              `data.text_key`) matched by the glob(s) `data.files` (comma-separated); this is
              how FineWeb parquet shards come in.
("synthetic" has no text and is handled in pipeline.py.)

Domains (the labels that per-domain evaluation and the `regimes` analysis compare): an entry of
`data.files` or `data.tfds_name` may be written `domain=pattern` (e.g.
`code=/data/py/*.jsonl,prose=/data/books/*.txt` or `news=lm1b,web=c4`), and with
`data.domain_key` set, a `.jsonl` field / `.parquet` column of that name labels each row
(rows without it keep their entry's label). Unlabelled data is one domain.

The held-out split of a source without one is chosen by a hash of each document's id
(`corpus.doc_hash`), so it is the same on every run and every host.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator

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
      cache_dir,
      eval_fraction,
      int(data_cfg.get("max_bytes_per_domain", corpus_lib.DEFAULT_MAX_BYTES_PER_DOMAIN)),
    )
  if source == "tfds":
    return tfds_corpus(
      data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.tfds_text_key, eval_fraction, max_docs
    )
  if source == "files":
    return files_corpus(
      data_cfg.files,
      data_cfg.text_key,
      eval_fraction,
      max_docs,
      domain_key=data_cfg.get("domain_key", ""),
    )
  raise ValueError(
    f"data.source={source!r} is unknown; use one of ('embedded', 'tfds', 'files', 'synthetic')."
  )


def embedded_corpus(cache_dir: str, eval_fraction: float, max_bytes_per_domain: int) -> TextCorpus:
  ec = corpus_lib.load_embedded(
    cache_dir, eval_fraction=eval_fraction, max_bytes_per_domain=max_bytes_per_domain
  )

  def iter_docs():
    for split in SPLITS:
      src = ec.sources[split]
      for i in range(len(src)):
        rec = src[i]
        yield split, int(rec["domain"]), _as_str(rec["text"])

  return TextCorpus("embedded", "embedded-" + ec.fingerprint, ec.domains, iter_docs)


def tfds_corpus(
  names: str, data_dir: str, text_key: str, eval_fraction: float, max_docs: int = 0
) -> TextCorpus:
  """Prepared TFDS dataset(s): `names` is one name, or `domain=name` pairs (one domain per
  dataset). Eval = each dataset's `validation` (else `test`) split, else a hash hold-out."""
  if not names:
    raise ValueError(
      "data.source=tfds needs data.tfds_name (e.g. lm1b) and "
      "data.tfds_data_dir (the directory the dataset was prepared into)."
    )
  entries = labelled_entries(names)
  labels = [label or name.split("/")[0].split(":")[0] for label, name in entries]
  domains = tuple(dict.fromkeys(labels))
  parts = [_tfds_dataset(name, data_dir, text_key, eval_fraction, max_docs) for _, name in entries]
  fp = _hash(*labels, *(part_fp for part_fp, _ in parts))

  def iter_docs():
    for label, (_, part_docs) in zip(labels, parts):
      yield from ((split, domains.index(label), text) for split, text in part_docs())

  return TextCorpus(f"tfds:{names}", "tfds-" + fp, domains, iter_docs)


def _tfds_dataset(name: str, data_dir: str, text_key: str, eval_fraction: float, max_docs: int):
  """(fingerprint, iter_docs) of one prepared dataset; iter_docs yields (split, text)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  _check_prepared(name, data_dir)
  try:
    sources = tfds.data_source(name, data_dir=data_dir or None, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
      f"Could not read TFDS dataset {name!r} from data_dir={data_dir or '~/tensorflow_datasets'}"
      f" ({type(e).__name__}: {str(e).splitlines()[0]}). It must be prepared in array_record "
      f"format first, e.g. `tfds build {name} --data_dir=DIR --file_format=array_record` on a "
      "machine with TensorFlow, or bring the text as files (data.source=files)."
    ) from e
  if "train" not in sources:
    raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {sorted(sources)}).")
  eval_split = next((s for s in ("validation", "test") if s in sources), None)
  first = sources["train"][0] if len(sources["train"]) else {}
  if text_key not in first:
    raise ValueError(
      f"TFDS dataset {name!r} has no feature data.tfds_text_key={text_key!r}; "
      f"its features are {sorted(first)}."
    )
  info = sources["train"].dataset_info
  fp = _hash(
    name,
    data_dir,
    str(info.version),
    text_key,
    eval_fraction,
    max_docs,
    *(f"{s}:{len(src)}" for s, src in sorted(sources.items())),
  )

  def iter_docs():
    train = sources["train"]
    for i in range(len(train) if not max_docs else min(max_docs, len(train))):
      heldout = eval_split is None and corpus_lib.doc_hash(f"{name}:{i}") < eval_fraction
      yield ("validation" if heldout else "train"), _as_str(train[i][text_key])
    if eval_split is not None:
      src = sources[eval_split]
      for i in range(len(src) if not max_docs else min(max_docs, len(src))):
        yield "validation", _as_str(src[i][text_key])

  return fp, iter_docs


def _check_prepared(name: str, data_dir: str) -> None:
  """TFDS's own error for a dataset never prepared reads as if it were prepared in the wrong
  format; say what is missing instead (local data dirs only)."""
  root = os.path.expanduser(data_dir or os.path.join("~", "tensorflow_datasets"))
  if "://" in root:
    return
  dataset_dir = os.path.join(root, name.split(":")[0])
  if not glob.glob(os.path.join(dataset_dir, "**", "dataset_info.json"), recursive=True):
    raise ValueError(
      f"Could not read TFDS dataset {name!r}: it is not prepared in "
      f"data.tfds_data_dir={root!r} (no "
      f"{dataset_dir}/.../dataset_info.json); nothing is downloaded at training time. Prepare "
      f"it once: `pip install tensorflow && tfds build {name.split(':')[0]} --data_dir={root} "
      "--file_format=array_record`, then pass --config.data.tfds_data_dir to that directory."
    )


def labelled_entries(spec: str) -> list[tuple[str | None, str]]:
  """`a=x,y,b=z` -> [("a", "x"), (None, "y"), ("b", "z")]: comma-separated entries, each
  optionally prefixed by a domain label."""
  out = []
  for entry in (e.strip() for e in spec.split(",")):
    if entry:
      m = re.fullmatch(r"([A-Za-z_][\w.-]*)=(.+)", entry)
      out.append((m.group(1), m.group(2).strip()) if m else (None, entry))
  return out


def files_corpus(
  patterns: str, text_key: str, eval_fraction: float, max_docs: int = 0, domain_key: str = ""
) -> TextCorpus:
  """Local files; every document is held out or not by the hash of "path:row". Domains come
  from `domain=glob` entries and the `domain_key` field (module docstring), else "files"."""
  if not patterns:
    raise ValueError(
      "data.source=files needs data.files, a glob of .txt/.jsonl/.parquet files "
      "(e.g. --config.data.files='/data/fineweb/*.parquet')."
    )
  label_of = {}  # path -> the label of the first entry that matches it
  for label, pattern in labelled_entries(patterns):
    for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
      if os.path.isfile(p):
        label_of.setdefault(p, label or "files")
  paths = sorted(label_of)
  if not paths:
    raise ValueError(
      f"data.files={patterns!r} matched no files (searched from {os.getcwd()}). "
      "Check the path, quote the glob so the shell does not expand it, and use "
      "'**' with a directory prefix for recursive matches."
    )
  bad = [p for p in paths if not p.endswith(tuple(_READERS))]
  if bad:
    raise ValueError(
      f"data.files matched files of unsupported type: {bad[:3]}; supported: {sorted(_READERS)}."
    )
  stats = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
  # Per-row labels (None: the file's label), read once here: the domains must be known first.
  row_labels = {p: _row_domains(p, domain_key) for p in paths} if domain_key else {}
  domains = tuple(
    sorted({label for p in paths for label in _file_domains(label_of[p], row_labels.get(p))})
  )
  labelled = domain_key or any(label != "files" for label in label_of.values())
  fp = _hash(
    text_key,
    eval_fraction,
    max_docs,
    *map(str, stats),
    *([domain_key, *(label_of[p] for p in paths)] if labelled else []),
  )

  def iter_docs():
    n = 0
    for path in paths:
      reader = next(r for ext, r in _READERS.items() if path.endswith(ext))
      rows = row_labels.get(path) or []
      for row, text in enumerate(reader(path, text_key)):
        heldout = corpus_lib.doc_hash(f"{os.path.basename(path)}:{row}") < eval_fraction
        label = (rows[row] if row < len(rows) else None) or label_of[path]
        yield ("validation" if heldout else "train"), domains.index(label), text
        n += 1
        if max_docs and n >= max_docs:
          return

  return TextCorpus(f"files:{patterns}", "files-" + fp, domains, iter_docs)


def _file_domains(file_label: str, rows: list | None) -> set[str]:
  return {file_label} if not rows else {label or file_label for label in rows}


def _row_domains(path: str, key: str) -> list[str | None] | None:
  """The `key` field of every row of a .jsonl / .parquet file (None where absent or empty);
  None for a file without such rows. Unreadable rows are left to the text reader to report."""

  def label(v):
    return None if v is None or v == "" else str(v)

  if path.endswith(".jsonl"):
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.strip():
          try:
            rec = json.loads(line)
          except ValueError:
            rec = {}
          out.append(label(rec.get(key)) if isinstance(rec, dict) else None)
    return out
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    f = pq.ParquetFile(path)
    if key not in f.schema_arrow.names:
      return None
    return [label(v) for v in f.read(columns=[key]).column(0).to_pylist()]
  return None


def _read_txt(path: str, text_key: str) -> Iterator[str]:
  del text_key
  # Strict, as for .jsonl: a latin-1 file decoded with errors="replace" would train on U+FFFD.
  with open(path, "rb") as f:
    raw = f.read()
  try:
    yield raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise ValueError(
      f"{path}:{line} is not valid UTF-8 (byte {e.start}: "
      f"{raw[e.start : e.start + 4]!r}); re-encode the file as UTF-8."
    ) from None


def _read_jsonl(path: str, text_key: str) -> Iterator[str]:
  # Bytes, decoded line by line: an error then names the right line, not a decoder chunk's.
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{where} is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 4]!r}"
          "); re-encode the file as UTF-8 or drop that line."
        ) from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(
          f"{where} is not valid JSON ({e.msg} at column {e.colno}); each line "
          "of a .jsonl file must be one JSON object."
        ) from None
      if not isinstance(rec, dict):
        raise ValueError(
          f"{where} is a JSON {type(rec).__name__}, not an object; each line "
          f"must be an object with a {text_key!r} field."
        )
      if text_key not in rec:
        raise ValueError(
          f"{where} has no field data.text_key={text_key!r}; its fields "
          f"are {sorted(rec)}. Set --config.data.text_key to the text field."
        )
      if not isinstance(rec[text_key], str):
        raise ValueError(
          f"{where}: field {text_key!r} is {json.dumps(rec[text_key])[:40]}, "
          "not a string; fix or drop that line."
        )
      yield rec[text_key]


def _read_parquet(path: str, text_key: str) -> Iterator[str]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  f = pq.ParquetFile(path)
  names = f.schema_arrow.names
  if text_key not in names:
    raise ValueError(
      f"{path} has no column data.text_key={text_key!r}; its columns are "
      f"{names}. Set --config.data.text_key to the text column."
    )
  for batch in f.iter_batches(batch_size=1024, columns=[text_key]):
    for text in batch.column(0).to_pylist():
      yield text or ""


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def _as_str(x) -> str:
  return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)


def _hash(*parts) -> str:
  return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
