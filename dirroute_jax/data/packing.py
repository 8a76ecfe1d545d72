"""Tokenize a corpus once into flat token streams on disk, and cut them into windows.

Every document is encoded and followed by EOS; the documents of a split are concatenated,
grouped by domain, into one 1-D `.npy` array (uint16 when the vocab fits, else uint32) under
`<cache_dir>/tokens/<corpus fingerprint>-<tokenizer fingerprint>/`. The arrays are memory-mapped
when read, so a window is a slice and each host only pages in the windows it reads.

Tokenisation streams: documents are encoded in chunks of a few MB and appended to one file per
(split, domain), so memory stays bounded however large the source (disk and the one-off
tokenisation time are the limits; `data.max_docs` caps a huge source).

A domain whose held-out split came out empty (e.g. one `.txt` file) gets the last
`eval_fraction` of its train tokens moved to validation, so every domain can be evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time

import numpy as np

from dirroute_jax.data import sources as sources_lib
from dirroute_jax.data import tokenizers as tok_lib

_CHUNK_CHARS = 4_000_000  # text encoded per `encode_batch` call


@dataclasses.dataclass(frozen=True)
class TokenStream:
  """Tokens of one split; domain d owns `tokens[domain_offsets[d]:domain_offsets[d + 1]]`."""

  path: str | None
  domain_offsets: tuple[int, ...]
  array: np.ndarray | None = None  # in-memory streams (synthetic data) instead of `path`

  def load(self) -> np.ndarray:
    return self.array if self.array is not None else np.load(self.path, mmap_mode="r")

  @property
  def num_tokens(self) -> int:
    return self.domain_offsets[-1]


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenize_corpus(
  corpus: sources_lib.TextCorpus, tokenizer: tok_lib.Tokenizer, cache_dir: str, eval_fraction: float
) -> tuple[dict[str, TokenStream], dict]:
  """Returns ({split: TokenStream}, stats), tokenizing on the first call for this pair only."""
  out_dir = os.path.join(cache_dir, "tokens", f"{corpus.fingerprint}-{tokenizer.fingerprint}")
  meta_path = os.path.join(out_dir, "meta.json")
  if not os.path.exists(meta_path):
    _build(corpus, tokenizer, out_dir, eval_fraction)
  with open(meta_path) as f:
    meta = json.load(f)
  streams = {
    split: TokenStream(os.path.join(out_dir, f"{split}.npy"), tuple(meta["domain_offsets"][split]))
    for split in sources_lib.SPLITS
  }
  return streams, {**meta["stats"], "token_dir": out_dir}


def _build(corpus, tokenizer, out_dir: str, eval_fraction: float) -> None:
  """Streams the corpus through the tokenizer into per-(split, domain) files, then joins them."""
  t0 = time.time()
  dtype = token_dtype(tokenizer.vocab_size)
  tmp_dir = f"{out_dir}.tmp{os.getpid()}"
  os.makedirs(tmp_dir, exist_ok=True)
  keys = [(s, d) for s in sources_lib.SPLITS for d in range(len(corpus.domains))]
  files = {k: open(os.path.join(tmp_dir, f"{k[0]}-{k[1]}.bin"), "wb") for k in keys}
  docs = {k: 0 for k in keys}
  chars = {k: 0 for k in keys}
  eos = np.array([tokenizer.eos_id], dtype)

  def flush(chunk):
    for (key, _), ids in zip(chunk, tokenizer.encode_batch([text for _, text in chunk])):
      if ids:
        np.asarray(ids, dtype).tofile(files[key])
        eos.tofile(files[key])

  chunk, chunk_chars = [], 0
  for split, domain, text in corpus.iter_docs():
    if not text:
      continue
    key = (split, domain)
    docs[key] += 1
    chars[key] += len(text)
    chunk.append((key, text))
    chunk_chars += len(text)
    if chunk_chars >= _CHUNK_CHARS:
      flush(chunk)
      chunk, chunk_chars = [], 0
  flush(chunk)
  for f in files.values():
    f.close()

  sizes = {k: os.path.getsize(f.name) // dtype.itemsize for k, f in files.items()}
  if sum(sizes[("train", d)] for d in range(len(corpus.domains))) == 0:
    shutil.rmtree(tmp_dir)
    raise ValueError(
      f"The corpus {corpus.name!r} has no training text ({sum(docs.values())} documents, all "
      "empty or held out). Point data.files / data.tfds_name at non-empty text, check "
      "data.text_key / data.tfds_text_key names the text field, or lower data.eval_fraction."
    )

  # Cut a held-out tail from the train tokens of any domain whose validation split is empty.
  tail = {}
  for d in range(len(corpus.domains)):
    n_train = sizes[("train", d)]
    if sizes[("validation", d)] == 0 and n_train >= 2 and eval_fraction > 0:
      tail[d] = max(1, int(n_train * eval_fraction))
      logging.warning(
        "Domain %r has no held-out documents; using the last %d of its %d train "
        "tokens for validation.",
        corpus.domains[d],
        tail[d],
        n_train,
      )

  meta = {"domain_offsets": {}, "stats": {"tokenizer": tokenizer.fingerprint, "splits": {}}}
  for split in sources_lib.SPLITS:
    pieces = []  # (bin path, start, stop) in output order
    for d in range(len(corpus.domains)):
      t, v = os.path.join(tmp_dir, f"train-{d}.bin"), os.path.join(tmp_dir, f"validation-{d}.bin")
      n_train, cut = sizes[("train", d)], tail.get(d, 0)
      if split == "train":
        pieces.append([(t, 0, n_train - cut)])
      else:
        pieces.append([(v, 0, sizes[("validation", d)]), (t, n_train - cut, n_train)])
    lengths = [sum(b - a for _, a, b in p) for p in pieces]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
    arr = np.lib.format.open_memmap(
      os.path.join(tmp_dir, f"{split}.npy"), mode="w+", dtype=dtype, shape=(max(offsets[-1], 1),)
    )
    for d, parts in enumerate(pieces):
      pos = offsets[d]
      for path, a, b in parts:
        if b > a:
          arr[pos : pos + b - a] = np.memmap(path, dtype=dtype, mode="r")[a:b]
          pos += b - a
    arr.flush()
    del arr
    meta["domain_offsets"][split] = offsets
    meta["stats"]["splits"][split] = {
      name: {"docs": docs[(split, d)], "chars": chars[(split, d)], "tokens": lengths[d]}
      for d, name in enumerate(corpus.domains)
    }
  meta["stats"]["tokenize_seconds"] = round(time.time() - t0, 2)
  for path in os.listdir(tmp_dir):
    if path.endswith(".bin"):
      os.remove(os.path.join(tmp_dir, path))
  with open(os.path.join(tmp_dir, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  # Publish atomically: a concurrent builder (another host on a shared disk) loses the race
  # harmlessly because both produce the same bytes.
  try:
    os.rename(tmp_dir, out_dir)
  except OSError:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if not os.path.exists(os.path.join(out_dir, "meta.json")):
      raise


def train_windows(num_tokens: int, seq_len: int) -> int:
  """Windows of seq_len + 1 tokens at stride seq_len: every next-token pair is trained once."""
  return max(0, (num_tokens - 1) // seq_len)


def eval_rows(stream: TokenStream, seq_len: int) -> np.ndarray:
  """[N, 3] int64 rows (start, length, domain) of eval windows, round-robin over domains.

  Windows never cross a domain boundary; the last window of a domain may be short (the pipeline
  pads it with zero weight). Round-robin order makes any prefix of the eval batches cover all
  domains about equally, so a trainer that evaluates only the first few batches still sees them.
  """
  per_domain = []
  offsets = stream.domain_offsets
  for d in range(len(offsets) - 1):
    lo, hi = offsets[d], offsets[d + 1]
    starts = np.arange(lo, max(lo, hi - 1), seq_len)
    per_domain.append([(s, min(seq_len + 1, hi - s), d) for s in starts])
  rows = []
  for k in range(max(map(len, per_domain), default=0)):
    rows += [p[k] for p in per_domain if k < len(p)]
  return np.array(rows, dtype=np.int64).reshape(-1, 3)
