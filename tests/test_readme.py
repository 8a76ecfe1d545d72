"""The README as a user meets it: every Python snippet runs, every `python launch/...` and
`python benchmarks/...` command names a script that exists and whose flags parse, every
`pip install '.[extra]'` names an extra of pyproject.toml, and the GPU install path is checked
by the sbatch script. (tests/test_repo.py checks the Quickstart lines against CI.)"""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)


def python_blocks() -> list[str]:
  return [code for lang, code in FENCE.findall(README) if lang == "python"]


def commands() -> list[str]:
  """Every `python launch/X.py ...` / `python benchmarks/X.py ...` command, as one line."""
  found = []
  for lang, code in FENCE.findall(README):
    if lang in ("bash", ""):
      for line in re.sub(r"\\\n\s*", " ", code).splitlines():
        found += [c.strip() for c in line.split("&&")]
  for span in re.findall(r"`([^`]+)`", FENCE.sub("", README)):
    found.append(re.sub(r"\s*\n\s*", " ", span).strip())
  return [c for c in found if re.match(r"python (launch|benchmarks)/\w+\.py", c)]


def test_readme_names_commands_and_snippets():
  scripts = {c.split()[1] for c in commands()}
  assert {
    "launch/train.py",
    "launch/sample.py",
    "launch/interpret.py",
    "benchmarks/step_time.py",
  } <= scripts, scripts
  assert len(python_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_snippet_runs(index, trained_workdir, capsys):
  code = python_blocks()[index].replace('"workdirs/tiny"', repr(trained_workdir))
  exec(compile(code, f"README.md python block {index}", "exec"), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip()  # every snippet shows the user something


# Runs each command's script as __main__ with absl's app.run replaced by "parse the flags and
# stop", one process for all, so a README flag that a launcher does not define (or a config
# override that does not exist) fails here. Commands with a `...` placeholder are partial:
# their named flags must exist, the required ones may be missing.
_CHECKER = r"""
import json, runpy, sys
from absl import app, flags
FLAGS = flags.FLAGS
builtin = set(FLAGS)
class Parsed(Exception):
  pass
def fake_run(main, argv=None, flags_parser=None, **kw):
  if PARTIAL:
    names = [a[2:].split("=")[0] for a in sys.argv[1:sys.argv.index("--")
                                                   if "--" in sys.argv else None]]
    unknown = [n for n in names if n.split(".")[0] not in FLAGS and
               not (n.startswith("no") and n[2:] in FLAGS)]
    if unknown:
      sys.exit(f"unknown flags {unknown}")
  else:
    (flags_parser or FLAGS)(sys.argv)
  raise Parsed
app.run = fake_run
results = []
for argv, partial in json.load(sys.stdin):
  PARTIAL = partial
  sys.argv = argv
  try:
    runpy.run_path(argv[0], run_name="__main__")
    error = "app.run was never called"
  except Parsed:
    error = None
  except SystemExit as e:
    error = str(e.code)
  except Exception as e:
    error = f"{type(e).__name__}: {e}"
  results.append(error)
  FLAGS.unparse_flags()
  for name in set(FLAGS) - builtin:
    delattr(FLAGS, name)
print(json.dumps(results))
"""


def test_every_readme_command_exists_and_its_flags_parse():
  todo = []
  for cmd in commands():
    argv = [re.sub(r"^\[(.*)\]$", r"\1", a) for a in shlex.split(cmd)[1:]]  # [--optional]
    assert os.path.isfile(os.path.join(REPO, argv[0])), f"README names {argv[0]}: missing"
    todo.append(([a for a in argv if a != "..."], "..." in argv))
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, "-c", _CHECKER],
    input=json.dumps(todo),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  errors = json.loads(done.stdout.splitlines()[-1])
  bad = [f"{' '.join(argv)}: {err}" for (argv, _), err in zip(todo, errors) if err]
  assert not bad, "\n".join(bad)


def test_pip_extras_named_in_readme_exist():
  extras = set(
    tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"][
      "optional-dependencies"
    ]
  )
  named = set(re.findall(r"pip install [^`\n]*?'\.\[(\w+)\]'", README))
  assert {"cuda", "test", "gcs"} <= named and named <= extras, (named, extras)


def test_sbatch_script_stops_without_gpu_jax():
  """The sbatch script checks that jax sees GPUs before `srun`; on this CPU machine the check
  fails and prints the README's install line."""
  script = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "slurm.py"),
      "--workdir=/shared/run",
      "--dry_run",
      "--",
      "--config.data.files=/shared/fineweb/*.parquet",
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
  ).stdout
  check = next(line for line in script.splitlines() if "default_backend" in line)
  assert script.index(check) < script.index("\nsrun ")
  failed = subprocess.run(
    ["bash", "-c", check.replace("python", shlex.quote(sys.executable), 1)],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert failed.returncode != 0
  assert "pip install -e '.[cuda]'" in failed.stderr
  assert "pip install -e '.[cuda]'" in README
  no_check = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "slurm.py"),
      "--workdir=/shared/run",
      "--dry_run",
      "--nocheck_gpu",
      "--",
      "--config.data.files=/shared/fineweb/*.parquet",
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
  ).stdout
  assert "default_backend" not in no_check
