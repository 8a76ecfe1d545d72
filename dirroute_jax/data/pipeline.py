"""The grain input pipeline: `make_data(cfg)` -> tokenizer, train batches, eval batches.

Train batches are a PURE FUNCTION OF (seed, step) (Levanter-style bitwise-deterministic resume):
  windows (random access into the token stream)
    -> shuffle(seed)          a fresh permutation each epoch (grain folds the epoch into the seed)
    -> repeat()               infinite
    -> batch(host batch)      consecutive chunks of B / process_count windows
    -> [process_index::process_count]   ShardOptions: host h reads only its rows of each step
so `train_dataset[step]` is this host's slice of global batch `step`, the global batch is the
hosts' slices concatenated in process order, and `train_iter(start_step)` is a grain iterator
whose state ({"next_index": step}) checkpoints with `grain.checkpoint.CheckpointSave`.

Batch layout (numpy, per host; B = batch_size / process_count, T = seq_len):
  inputs  int32   [B, T]   window[:-1]
  targets int32   [B, T]   window[1:]
  weights float32 [B, T]   1 where the target is a real token, 0 on padding
  domain  int32   [B]      eval batches only: index into `Data.domains`; -1 on padding rows
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import grain
import numpy as np

from dirroute_jax.data import packing
from dirroute_jax.data import sources as sources_lib
from dirroute_jax.data import tokenizers as tok_lib

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "dirroute_jax")
DEFAULT_SYNTHETIC_TOKENS = 1 << 20


class _Windows:
  """Random-access windows of T + 1 tokens. Pickles without the memmap (for grain workers)."""

  def __init__(self, stream: packing.TokenStream, seq_len: int, rows_Nx3: np.ndarray | None):
    self._stream, self._seq_len, self._rows = stream, seq_len, rows_Nx3
    self._tokens = None

  def __getstate__(self):
    return {**self.__dict__, "_tokens": None}

  def __len__(self) -> int:
    if self._rows is not None:
      return len(self._rows)
    return packing.train_windows(self._stream.num_tokens, self._seq_len)

  def __getitem__(self, i: int):
    if self._tokens is None:
      self._tokens = self._stream.load()
    if self._rows is None:  # train: window i starts at i * T
      start = int(i) * self._seq_len
      return np.asarray(self._tokens[start : start + self._seq_len + 1], np.int32)
    start, length, domain = (int(x) for x in self._rows[i])
    window = np.zeros(self._seq_len + 1, np.int32)
    window[:length] = self._tokens[start : start + length]
    return {"window": window, "length": np.int32(length), "domain": np.int32(domain)}


def _train_batch(window_BxT1: np.ndarray) -> dict[str, np.ndarray]:
  return {
    "inputs": window_BxT1[:, :-1],
    "targets": window_BxT1[:, 1:],
    "weights": np.ones(window_BxT1[:, 1:].shape, np.float32),
  }


def _eval_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  window_BxT1, length_B = rows["window"], rows["length"]
  t_T = np.arange(window_BxT1.shape[1] - 1)
  # Target t is window[t + 1]: real when t + 1 < length.
  weights_BxT = (t_T[None, :] + 1 < length_B[:, None]).astype(np.float32)
  return {
    "inputs": window_BxT1[:, :-1],
    "targets": window_BxT1[:, 1:],
    "weights": weights_BxT,
    "domain": np.where(length_B > 0, rows["domain"], -1).astype(np.int32),
  }


@dataclasses.dataclass
class Data:
  """Everything the trainer and the analyses need from the data side.

  Attributes:
    tokenizer: encodes/decodes text; its `vocab_size` fits `model.vocab_size`.
    domains: names of the domain ids carried by eval batches.
    train_dataset: grain MapDataset; element `step` is this host's train batch at `step`.
    eval_dataset: grain MapDataset, finite; element i is this host's i-th eval batch.
    stats: corpus sizes (docs / chars / tokens per split and domain) and cache paths.
  """

  tokenizer: tok_lib.Tokenizer
  domains: tuple[str, ...]
  train_dataset: grain.MapDataset
  eval_dataset: grain.MapDataset
  seq_len: int
  global_batch_size: int
  host_batch_size: int
  process_index: int
  process_count: int
  stats: dict
  read_options: grain.ReadOptions

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    return self.train_dataset[step]

  def train_iter(self, start_step: int = 0) -> grain.DatasetIterator:
    """Checkpointable iterator positioned at `start_step` (state: {"next_index": step})."""
    it = iter(self.train_dataset.to_iter_dataset(self.read_options))
    if start_step:
      self.seek(it, start_step)
    return it

  @staticmethod
  def seek(it: grain.DatasetIterator, step: int) -> None:
    """Positions a train iterator at `step`: batches are a pure function of the step, so this
    is exact whatever host layout wrote the checkpoint."""
    it.set_state({"next_index": int(step)})

  def record(self) -> dict:
    """What a run trains and is evaluated on: content fingerprints and token counts (written
    to the workdir at training time, repeated in every report)."""
    return {
      "corpus": self.stats.get("corpus_fingerprint"),
      "tokenizer": self.tokenizer.fingerprint,
      "tokens": {
        split: {d: c["tokens"] for d, c in per.items()}
        for split, per in self.stats.get("splits", {}).items()
      },
      "eval_windows": self.stats.get("eval_windows"),
    }

  @property
  def num_eval_batches(self) -> int:
    return len(self.eval_dataset)

  def eval_batches(self, num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """All eval batches (`num_batches` None or 0), or a fixed sample of `num_batches` of them
    spread evenly over the split (every `eval_stride(num_batches)`-th); identical on every call."""
    total = len(self.eval_dataset)
    n = total if not num_batches else min(num_batches, total)
    for i in range(n):
      yield self.eval_dataset[i * total // n]

  def eval_stride(self, num_batches: int | None = None) -> float:
    """The sampling interval of `eval_batches(num_batches)` in batches (1.0: all of them)."""
    total = len(self.eval_dataset)
    return total / (total if not num_batches else min(num_batches, total))


def resolve_cache_dir(data_cfg) -> str:
  return os.path.abspath(os.path.expanduser(data_cfg.get("cache_dir", "") or DEFAULT_CACHE_DIR))


def make_data(
  cfg, *, process_index: int = 0, process_count: int = 1, tokenizer: tok_lib.Tokenizer | None = None
) -> Data:
  """Builds (first call) or loads (later calls) the corpus, tokenizer and token cache.

  Reads `seed`, `batch_size` (global), `seq_len`, `model.vocab_size` and `data.*`. Besides the
  keys in config.py it honours, when present: `data.max_bytes_per_domain` (embedded corpus cap,
  default 6 MB), `data.max_docs` (tfds/files: documents read per split, 0 = all) and
  `data.synthetic_tokens` (size of the synthetic train stream). `data.worker_count` > 0 sets the
  number of grain reader threads (default 4); a window is a memory-map slice, so worker
  processes would buy nothing.

  Args:
    cfg: the experiment config (`dirroute_jax.config.default_config()` and overrides).
    process_index: this host's index; host h reads rows [h*B/P, (h+1)*B/P) of every batch.
    process_count: number of hosts P; `batch_size` must be divisible by it.
    tokenizer: use this tokenizer instead of the configured one (analysis of a trained
      workdir must tokenize with the tokenizer the model was trained with, even if the
      corpus, and so a retrained BPE, has changed since).
  """
  data_cfg = cfg.data
  global_batch, seq_len, seed = int(cfg.batch_size), int(cfg.seq_len), int(cfg.seed)
  shard = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count)
  if global_batch % shard.shard_count:
    raise ValueError(
      f"batch_size={global_batch} is not divisible by the number of hosts "
      f"(process_count={process_count}); every host needs the same batch. "
      f"Use a batch_size that is a multiple of {process_count}."
    )
  host_batch = global_batch // shard.shard_count
  cache_dir = resolve_cache_dir(data_cfg)

  if data_cfg.source == "synthetic":
    tokenizer = tok_lib.SyntheticTokenizer(cfg.model.vocab_size)
    streams, stats = _synthetic_streams(
      seed, tokenizer.vocab_size, int(data_cfg.get("synthetic_tokens", DEFAULT_SYNTHETIC_TOKENS))
    )
    domains = ("synthetic",)
  else:
    # Fail before building a corpus or training a tokenizer the model cannot use.
    known = {
      "gpt2": tok_lib.GPT2Tokenizer.vocab_size,
      "bytes": tok_lib.ByteTokenizer.vocab_size,
      "bpe": int(data_cfg.bpe_vocab_size),
    }
    if data_cfg.tokenizer in known:
      tok_lib.check_vocab_fits(data_cfg.tokenizer, known[data_cfg.tokenizer], cfg.model.vocab_size)
    corpus = sources_lib.make_corpus(data_cfg, cache_dir)
    if tokenizer is None:
      tokenizer = tok_lib.get_tokenizer(
        data_cfg, lambda: corpus.texts("train"), cache_dir, corpus_fingerprint=corpus.fingerprint
      )
    tok_lib.check_tokenizer_fits(tokenizer, cfg.model.vocab_size)
    streams, stats = packing.tokenize_corpus(
      corpus, tokenizer, cache_dir, float(data_cfg.eval_fraction)
    )
    domains = corpus.domains

  train = streams["train"]
  if packing.train_windows(train.num_tokens, seq_len) == 0:
    raise ValueError(
      f"The training split has {train.num_tokens} tokens, fewer than one window "
      f"of seq_len + 1 = {seq_len + 1}. Add text or lower seq_len."
    )
  train_ds = (
    grain.MapDataset.source(_Windows(train, seq_len, None))
    .shuffle(seed=seed % 2**32)
    .repeat()
    .batch(host_batch)[shard.shard_index :: shard.shard_count]
    .map(_train_batch)
  )

  rows_Nx3 = packing.eval_rows(streams["validation"], seq_len)
  pad = (-len(rows_Nx3)) % global_batch  # whole global batches: every host gets the same count
  rows_Nx3 = np.concatenate([rows_Nx3, np.zeros((pad, 3), np.int64)])
  eval_ds = (
    grain.MapDataset.source(_Windows(streams["validation"], seq_len, rows_Nx3))
    .batch(host_batch)[shard.shard_index :: shard.shard_count]
    .map(_eval_batch)
  )

  threads = int(data_cfg.get("worker_count", 0)) or 4
  stats = {
    **stats,
    "cache_dir": cache_dir,
    "train_tokens": train.num_tokens,
    "corpus_fingerprint": None if data_cfg.source == "synthetic" else corpus.fingerprint,
    "train_windows": packing.train_windows(train.num_tokens, seq_len),
    "eval_windows": len(rows_Nx3) - pad,
  }
  return Data(
    tokenizer=tokenizer,
    domains=tuple(domains),
    train_dataset=train_ds,
    eval_dataset=eval_ds,
    seq_len=seq_len,
    global_batch_size=global_batch,
    host_batch_size=host_batch,
    process_index=shard.shard_index,
    process_count=shard.shard_count,
    stats=stats,
    read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=16),
  )


def _synthetic_streams(seed: int, vocab_size: int, num_tokens: int):
  """Uniform random ids (EOS excluded) for throughput and smoke tests; nothing to learn."""
  rng = np.random.default_rng([seed, 0x5EED])
  dtype = packing.token_dtype(vocab_size)
  n_eval = max(num_tokens // 20, 2)
  train = rng.integers(0, vocab_size - 1, num_tokens, dtype=np.int64).astype(dtype)
  valid = rng.integers(0, vocab_size - 1, n_eval, dtype=np.int64).astype(dtype)
  streams = {
    "train": packing.TokenStream(None, (0, num_tokens), train),
    "validation": packing.TokenStream(None, (0, n_eval), valid),
  }
  stats = {
    "tokenizer": f"synthetic-{vocab_size}",
    "splits": {
      "train": {"synthetic": {"docs": 0, "chars": 0, "tokens": num_tokens}},
      "validation": {"synthetic": {"docs": 0, "chars": 0, "tokens": n_eval}},
    },
  }
  return streams, stats
