"""The 433M pair compiled for each pod of BENCHMARKS.md with that pod's own compiler.

  python benchmarks/plan_targets.py --out=/tmp/plans                # every row, then the table
  python benchmarks/plan_targets.py --out=/tmp/plans --rows=v5e-16   # some rows
  python benchmarks/plan_targets.py --out=/tmp/plans --table_only    # the table from saved rows

Each row runs `launch/plan.py --target=... --json=OUT/<row>.json` in its own process (libtpu and
the CUDA plugin each want a fresh one; a 433M compile holds several GiB) and is skipped when its
JSON exists, so an interrupted run resumes. The table (markdown, BENCHMARKS.md's format) goes to
stdout and OUT/table.md. The numbers are the compilers' own memory analyses and compile times
on this machine, not measurements on the chips: the table says so.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024**3

# name -> (target, config overrides, what the row is). The paper's batch everywhere: 128 x 1024
# in 8 micro-batches of 16 (configs/433m.py).
ROWS = {
  "v4-8": ("v4-8", [], "mesh fsdp 4 (as shipped)"),
  "v5e-16": ("v5e-16", [], "mesh fsdp 16 (as shipped)"),
  "v5p-8": ("v5p-8", [], "mesh fsdp 4 (as shipped)"),
  "v6e-8": ("v6e-8", [], "mesh fsdp 8 (as shipped)"),
  "1xh100": ("1xh100", [], "one GPU (as shipped)"),
  "8xh100-fsdp": ("8xh100", [], "mesh fsdp 8 (as shipped)"),
  "8xh100-dp": (
    "8xh100",
    ["--config.mesh.data=-1", "--config.mesh.fsdp=1"],
    "mesh data 8 (replicated)",
  ),
  "8xh100-tp2": (
    "8xh100",
    ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2"],
    "mesh fsdp 4 x tensor 2",
  ),
}


def run_row(name, out_dir, config, extra):
  target, overrides, _ = ROWS[name]
  path = os.path.join(out_dir, f"{name}.json")
  if os.path.exists(path):
    return path
  cmd = [
    sys.executable,
    os.path.join(REPO, "launch", "plan.py"),
    f"--config={config}",
    f"--target={target}",
    f"--json={path}.tmp",
    *overrides,
    *extra,
  ]
  print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
  if proc.returncode != 0:
    print(
      f"   FAILED ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr
    )
    with open(os.path.join(out_dir, f"{name}.err"), "w") as f:
      f.write(proc.stdout + proc.stderr)
    return None
  os.replace(f"{path}.tmp", path)
  return path


def _gib(b):
  return f"{b / GIB:.2f}"


def table(out_dir, names, extra):
  lines = [
    "| target | mesh | compiler | attention | state / device (GiB) | temporaries (GiB) | "
    "peak / device (GiB) | HBM (GiB) | peak / HBM | fits, 20% spare | compile (s) | "
    "compiler FLOPs / model FLOPs |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name in names:
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.exists(path):
      lines.append(f"| {name} | {ROWS[name][2]} | not compiled (see {name}.err) |" + " |" * 9)
      continue
    p = json.load(open(path))
    share = p["peak_bytes"] / p["hbm_bytes"]
    kernels = sorted(
      {line.split(" (")[0].replace("Attention: ", "") for line in p["kernels"].values()}
    )
    flops = (
      f"{p['flops_per_device'] * p['devices'] / p['model_flops']:.2f}"
      if p["xla_flops"]
      else "none given"
    )
    fit = "yes" if share <= 0.8 else ("yes, < 20% spare" if share <= 1 else "NO")
    lines.append(
      f"| {p['target']} | {ROWS[name][2]} | {p['compiler']} | {', '.join(kernels)} | "
      f"{_gib(p['state_bytes'])} | {_gib(p['temp_bytes'])} | {_gib(p['peak_bytes'])} | "
      f"{p['hbm_bytes'] / GIB:.0f} | {100 * share:.0f}% | {fit} | "
      f"{p['compile_seconds']:.0f} | {flops} |"
    )
  head = (
    f"`python benchmarks/plan_targets.py --out=DIR{' ' + ' '.join(extra) if extra else ''}`"
    f" on {platform.node() or 'this machine'} ({os.cpu_count()} CPU cores, "
    f"{platform.platform()}), {datetime.date.today().isoformat()}. Memory and compile "
    "time are the target compilers' (compile-only devices on a CPU, nothing run on a "
    "chip); the compile time is this CPU's."
  )
  return head + "\n\n" + "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--config", default=os.path.join(REPO, "configs", "433m.py"))
  ap.add_argument("--rows", default=",".join(ROWS), help="Comma-separated: " + ",".join(ROWS))
  ap.add_argument("--table_only", action="store_true")
  args, extra = ap.parse_known_args()  # anything else goes to every launch/plan.py
  names = [n for n in args.rows.split(",") if n]
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    sys.exit(f"error: unknown rows {unknown}; use {','.join(ROWS)}")
  os.makedirs(args.out, exist_ok=True)
  if not args.table_only:
    for name in names:
      run_row(name, args.out, args.config, extra)
  text = table(args.out, names, extra)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
