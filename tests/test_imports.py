"""The package's import graph has no cycle.

Built from the source with `ast` (nothing is imported): every `import` and `from ... import`
of every module of dirroute_jax/, at module level and inside functions alike, since a deferred
import still makes the two modules depend on each other; a cycle hidden behind one is what
issue 23 removed (config -> model/params -> model/transformer -> model/attention -> config).
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dirroute_jax"


def _modules(root: str) -> dict[str, str]:
  """{dotted module name: path} for every .py file of the package under `root`."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(os.path.join(root, PACKAGE)):
    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
    for f in sorted(filenames):
      if f.endswith(".py"):
        parts = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = os.path.join(dirpath, f)
  return out


def _imported(name: str, path: str, modules: dict[str, str]) -> set[str]:
  """The package's modules that module `name` (at `path`) imports, anywhere in its body."""
  is_package = os.path.basename(path) == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: level 1 is this module's package
        package = name.split(".") if is_package else name.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import module` imports pkg.module; `from module import name`, the module.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    for target in targets:
      # `import a.b.c` of a name that is not a module (an attribute): its nearest module.
      while target and target not in modules:
        target = target.rpartition(".")[0]
      if target and target != name:
        out.add(target)
  return out


def import_graph(root: str = REPO) -> dict[str, set[str]]:
  modules = _modules(root)
  return {name: _imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_graph_sees_every_form_of_import():
  graph = import_graph()
  # Deferred (inside a function) and `from pkg import module` forms are edges too.
  assert "dirroute_jax.model.params" in graph["dirroute_jax.model.variants"]
  assert "dirroute_jax.train.step" in graph["dirroute_jax.train.plan"]
  assert "dirroute_jax.config" in graph["dirroute_jax.model.transformer"]


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
