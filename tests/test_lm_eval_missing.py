"""launch/lm_eval.py without lm-evaluation-harness: a one-line error naming the extra (runs
whether or not lm-eval is installed: a stand-in package that fails to import shadows it)."""

import os
import subprocess
import sys

from dirroute_jax import exit_codes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_launcher_without_lm_eval_says_which_extra(tmp_path):
  fake = tmp_path / "lm_eval"
  fake.mkdir()
  (fake / "__init__.py").write_text("raise ImportError('No module named lm_eval')\n")
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "lm_eval.py"),
      "--workdir=/nonexistent",
      "--tasks=arc_easy",
    ],
    capture_output=True,
    text=True,
    env=env,
  )
  assert done.returncode == exit_codes.USAGE
  assert done.stderr.count("\n") == 1 and "pip install -e '.[eval]'" in done.stderr, done.stderr
