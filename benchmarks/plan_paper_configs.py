"""The plan of every paper config on TPU slices, compiled here from shapes (no TPU needed).

For each of configs/{clothing1m,cifar10,mnli,qqp,cinic10,cifar100}.py and each slice — a
v5e chip (``v5e:1x1``), v5e-8 (``v5e:2x4``), v5p-8 (``v5:2x2x1``, megacore), v4-8
(``v4:2x2x1``) — runs :func:`reducr_jax.plan.make_plan` in a child process (one at a time,
each with ``--timeout`` seconds) and records the stage-1 strategy, the peak HBM per chip,
the estimated hours at the roofline and the compile time it took on this machine. Needs
libtpu (``pip install '.[tpu]'``). Results go to ``benchmarks/results/plan_paper_configs.
{json,md}``, rewritten after every plan (so a run cut short keeps what finished).

  python benchmarks/plan_paper_configs.py [--configs clothing1m,cifar10] \\
      [--topologies v5e:1x1,v5e:2x4] [--timeout 1800] [--jobs 2] [--missing]

Rows already in ``plan_paper_configs.json`` for other (config, slice) pairs are kept, so the
table can be filled in several runs; ``--jobs`` plans that many pairs at once (each compile
is mostly one thread; the compile seconds then include the other job's contention).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ("clothing1m", "cifar10", "mnli", "qqp", "cinic10", "cifar100")
TOPOLOGIES = ("v5e:1x1", "v5e:2x4", "v5:2x2x1", "v4:2x2x1")
NAMES = {"v5e:1x1": "v5e chip", "v5e:2x4": "v5e-8", "v5:2x2x1": "v5p-8", "v4:2x2x1": "v4-8"}

_CHILD = """
import json, sys, time
from reducr_jax.config import configuration
from reducr_jax import plan
config = configuration.load_config(sys.argv[1])
t0 = time.process_time()
try:
  p, extras = plan.make_plan(config, sys.argv[2])
except Exception as e:  # one line, recorded
  json.dump({"error": str(e).splitlines()[0][:300]}, open(sys.argv[3], "w"))
  raise SystemExit(0)
print(plan.format_plan(p, extras), file=sys.stderr)
out = {"plan": p, "stage_seconds": extras["stage_seconds"], "input": extras["input"],
       "compile_seconds": extras["compile_seconds"],
       "compile_cpu_seconds": time.process_time() - t0,
       "memory": {q.name: q.memory for q in extras["programs"]}}
json.dump(out, open(sys.argv[3], "w"), default=str)
"""


def run_one(config: str, topo: str, timeout: float) -> dict:
  out = RESULTS / f".plan_{config}_{topo.replace(':', '_')}.json"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  t0 = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT / "configs" / f"{config}.py"),
                           topo, str(out)], env=env, timeout=timeout, capture_output=True,
                          text=True, check=False)
    sys.stderr.write(proc.stderr[-3000:])
    row = json.loads(out.read_text()) if out.exists() else {
        "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
  except subprocess.TimeoutExpired:
    row = {"error": f"not finished in {timeout:.0f} s"}
  out.unlink(missing_ok=True)
  row.update(config=config, topology=topo, wall_seconds=time.perf_counter() - t0)
  return row


def markdown(rows: list[dict]) -> str:
  lines = ["| config | slice | stage-1 strategy | peak HBM GiB / chip (program) | fits | "
           "stage 1 h | stage 2 h | total h | chip-hours | host cores / chip | compile s "
           "(wall, CPU) |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    slice_ = f"{NAMES.get(r['topology'], r['topology'])} (`{r['topology']}`)"
    if "plan" not in r:
      lines.append(f"| {r['config']} | {slice_} | {r['error']} | | | | | | | | "
                   f"{r['wall_seconds']:.0f} |")
      continue
    p = r["plan"]
    progs = {q["name"]: q for q in p["programs"]}
    s1 = progs.get("stage1_expert_step", {}).get("strategy", "-")
    top = max(p["programs"], key=lambda q: q["peak_bytes_per_chip"])
    st = r["stage_seconds"]
    cores = r["input"]["cores_per_chip"]
    lines.append(
        f"| {r['config']} | {slice_} | {s1} | {top['peak_bytes_per_chip'] / 2**30:.2f} "
        f"({top['name']}) | {'yes' if p['fits'] else 'no'} | "
        f"{st.get('stage 1', 0) / 3600:.2f} | {st.get('stage 2', 0) / 3600:.2f} | "
        f"{p['total_seconds'] / 3600:.2f} | {p['chip_hours']:.2f} | "
        f"{'in memory' if cores is None else f'{cores:.0f}'} | "
        f"{r['compile_seconds']:.0f}, {r['compile_cpu_seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default=",".join(CONFIGS))
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--timeout", type=float, default=1800.0)
  p.add_argument("--order", choices=("topology", "config"), default="topology",
                 help="outer loop: every config on one slice first, or every slice of "
                      "one config first")
  p.add_argument("--jobs", type=int, default=1, help="plans compiled at the same time")
  p.add_argument("--missing", action="store_true",
                 help="only the pairs with no row yet, or whose row is a timeout")
  args = p.parse_args()
  configs, topos = args.configs.split(","), args.topologies.split(",")
  pairs = ([(c, t) for t in topos for c in configs] if args.order == "topology" else
           [(c, t) for c in configs for t in topos])
  RESULTS.mkdir(parents=True, exist_ok=True)
  path = RESULTS / "plan_paper_configs.json"
  earlier = json.loads(path.read_text()) if path.exists() else []
  if args.missing:
    have = {(r["config"], r["topology"]) for r in earlier
            if not r.get("error", "").startswith("not finished")}
    pairs = [pair for pair in pairs if pair not in have]
  wanted = set(pairs)
  earlier = [r for r in earlier if (r["config"], r["topology"]) not in wanted]
  order = {pair: i for i, pair in enumerate((c, t) for t in TOPOLOGIES for c in CONFIGS)}
  done: dict[tuple[str, str], dict] = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
    futures = {pool.submit(run_one, c, t, args.timeout): (c, t) for c, t in pairs}
    for future in concurrent.futures.as_completed(futures):
      row = done[futures[future]] = future.result()
      print(f"{row['config']} {row['topology']}: {row.get('error') or 'ok'} "
            f"({row['wall_seconds']:.0f} s)", flush=True)
      rows = sorted(earlier + list(done.values()),
                    key=lambda r: order.get((r["config"], r["topology"]), len(order)))
      path.write_text(json.dumps(rows, indent=1, default=str))
      (RESULTS / "plan_paper_configs.md").write_text(markdown(rows))


if __name__ == "__main__":
  main()
