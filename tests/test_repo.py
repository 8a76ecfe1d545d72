"""Repository hygiene: CI runs exactly the README's test line; the project calls no deprecated
library API and no private jax module."""

import ast
import glob
import json
import os
import re
import subprocess
import sys
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ("dirroute_jax", "launch", "benchmarks")  # the project's own code (tests excluded)
LIBS = ("jax", "flax", "optax", "orbax", "grain", "chex")
# Deprecated names still used in files that another change owns; drop an entry with the fix.
KNOWN: set[tuple[str, str]] = set()  # (file, name) pairs allowed to stay for now


def _quickstart_lines():
  readme = open(os.path.join(REPO, "README.md")).read()
  block = re.search(r"## Quickstart.*?```(?:bash)?\n(.*?)```", readme, re.S).group(1)
  return [l for l in block.splitlines() if l.strip() and not l.startswith("#")]


def test_quickstart_has_two_lines_and_ci_runs_the_test_line():
  lines = _quickstart_lines()
  assert len(lines) == 2, lines
  assert "pytest" in lines[1]
  assert lines[1] in open(os.path.join(REPO, ".ci", "run")).read()


def _sources():
  for root in CODE:
    for path in sorted(glob.glob(os.path.join(REPO, root, "**", "*.py"), recursive=True)):
      yield os.path.relpath(path, REPO), ast.parse(open(path).read(), path)


def _library_names(tree) -> set[str]:
  """Every dotted library name the file spells out: `jax.sharding.X` after `import jax`,
  `jnp.foo` after `import jax.numpy as jnp`, `X` after `from jax.sharding import X`."""
  aliases, names = {}, set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] in LIBS:
          aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
          names.add(a.name)
    elif (
      isinstance(node, ast.ImportFrom)
      and not node.level
      and node.module
      and node.module.split(".")[0] in LIBS
    ):
      for a in node.names:
        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        names.add(f"{node.module}.{a.name}")
  for node in ast.walk(tree):
    chain = []
    while isinstance(node, ast.Attribute):
      chain.append(node.attr)
      node = node.value
    if chain and isinstance(node, ast.Name) and node.id in aliases:
      names.add(".".join([aliases[node.id], *reversed(chain)]))
  return names


# Resolves each name in a fresh interpreter, jax's first: jax warns about a deprecated module
# attribute only at its first access in a process (and a library imported earlier, e.g. orbax,
# may have taken that), so a test-time warning filter alone misses them.
_RESOLVE = r"""
import importlib, json, sys, warnings
bad = {}
for name in json.loads(sys.argv[1]):
  parts, obj = name.split("."), None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for i in range(len(parts), 0, -1):
      try:
        obj = importlib.import_module(".".join(parts[:i]))
        break
      except ImportError:
        continue
    for attr in parts[i:]:
      obj = getattr(obj, attr, None)
  for w in caught:
    if issubclass(w.category, (DeprecationWarning, FutureWarning)) and w.filename == __file__:
      bad[name] = str(w.message)
print(json.dumps(bad))
"""


def test_the_project_uses_no_deprecated_or_private_library_names(tmp_path):
  used = {}
  for path, tree in _sources():
    for name in _library_names(tree):
      used.setdefault(name, set()).add(path)
  private = sorted(
    f"{p}: {n}"
    for n, ps in used.items()
    for p in ps
    if any(p_.startswith("_") and not p_.startswith("__") for p_ in n.split("."))
  )
  assert not private, private  # e.g. jax._src: gone or changed without notice
  script = tmp_path / "resolve.py"
  script.write_text(_RESOLVE)
  order = sorted(used, key=lambda n: (n.split(".")[0] != "jax", n))
  out = subprocess.run(
    [sys.executable, str(script), json.dumps(order)],
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  bad = json.loads(out.stdout.splitlines()[-1])
  found = sorted(
    f"{p}: {n}: {msg}" for n, msg in bad.items() for p in used[n] if (p, n) not in KNOWN
  )
  assert not found, found


def test_a_deprecation_warning_from_the_projects_code_is_an_error():
  """pyproject's filterwarnings: a library that warns with its caller's stacklevel raises in a
  dirroute_jax caller, and only warns in anyone else's."""

  def deprecated_api():
    warnings.warn("deprecated", DeprecationWarning, stacklevel=2)

  def caller(module):
    namespace = {"__name__": module}
    exec(compile("def call(f):\n  f()\n", module.replace(".", "/") + ".py", "exec"), namespace)
    return namespace["call"]

  with pytest.raises(DeprecationWarning):
    caller("dirroute_jax.train.fake")(deprecated_api)
  with warnings.catch_warnings(record=True) as caught:
    caller("somelib.fake")(deprecated_api)
  assert [w.category for w in caught] == [DeprecationWarning]


def test_the_tree_is_formatted_and_linted_by_ruff():
  """pyproject.toml's [tool.ruff]: `ruff format . && ruff check .` leave nothing to change."""
  import shutil

  ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
  if not os.path.exists(ruff):
    pytest.skip("ruff not installed: pip install -e '.[test]'")
  for cmd in ([ruff, "format", "--check", "."], [ruff, "check", "."]):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd[1:])}: {proc.stdout}{proc.stderr}"
