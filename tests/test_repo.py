"""Repository hygiene: CI runs exactly the README's test line."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart_lines():
  readme = open(os.path.join(REPO, "README.md")).read()
  block = re.search(r"## Quickstart.*?```(?:bash)?\n(.*?)```", readme, re.S).group(1)
  return [l for l in block.splitlines() if l.strip() and not l.startswith("#")]


def test_quickstart_has_two_lines_and_ci_runs_the_test_line():
  lines = _quickstart_lines()
  assert len(lines) == 2, lines
  assert "pytest" in lines[1]
  assert lines[1] in open(os.path.join(REPO, ".ci", "run")).read()
