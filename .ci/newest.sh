#!/usr/bin/env bash
# CI, stage 3 (run by .ci/run after its stages 1-2): the newest end of pyproject.toml's ranges.
# Stages 1-2 test Python 3.11, where pip resolves to jax 0.10.2 (the last jax for 3.11); this
# builds a fresh venv on Python 3.12, where the same `pip install -e '.[test]'` resolves to the
# newest jax, flax, orbax-checkpoint and grain, then runs the quick suite and one short training run that is
# killed with SIGKILL after a checkpoint, rerun, and compared bitwise with an uninterrupted run
# (tests/test_train_loop.py::test_losses_fall_and_sigkill_resume_is_bitwise).
# Python: $NEWEST_PYTHON, else pyenv's 3.12.1, else python3.12 on PATH. The venv: $NEWEST_VENV,
# else .venv-newest.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${NEWEST_PYTHON:-$HOME/.pyenv/versions/3.12.1/bin/python3}"
if [[ ! -x "$py" ]]; then
  py="$(command -v python3.12 || true)"
fi
if [[ -z "$py" ]] || ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  echo "error: .ci/newest.sh needs Python >= 3.12 (jax >= 0.11 does): set NEWEST_PYTHON, or" \
       "install ~/.pyenv/versions/3.12.1 or python3.12 on PATH." >&2
  exit 1
fi
venv="${NEWEST_VENV:-.venv-newest}"
rm -rf "$venv"
"$py" -m venv "$venv" && . "$venv/bin/activate" && pip install -q -e '.[test]'
echo "# $(python --version): $(pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|orbax-checkpoint|grain|optax|chex) ' | tr -s ' ' | paste -sd, -)"
# The point of this stage: fail if pip fell back to the jax that .ci/run already tests.
python -c 'import jax, sys; v = tuple(map(int, jax.__version__.split(".")[:2])); sys.exit(f"error: jax {jax.__version__} on the newest stack; expected >= 0.11" if v < (0, 11) else 0)'
pytest -q -m "not slow"
pytest -q tests/test_train_loop.py::test_losses_fall_and_sigkill_resume_is_bitwise
