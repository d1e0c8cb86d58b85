"""Runs every benchmark with modest settings and writes one summary of all their tables.

One command (about 5 minutes on 2 otherwise idle CPU cores, up to 10 when shared)::

  python benchmarks/run_all.py

runs, each in its own process (so each starts JAX with its own flags), with modest
settings:

  ==================  =========================================================
  ``experts``         ``experts.py --build_rounds 2`` (MLP and CNN, C = 10)
  ``train_step``      ``train_step.py --all --resnet_rounds 12`` (MLP and shrunk
                      ResNet, every variant)
  ``meta_reweight``   ``meta_reweight.py --models mlp,cnn``
  ``scaling``         ``scaling.py`` (B, C and device-count sweeps on the MLP)
  ``memory``          ``memory.py`` (compile-only memory analysis, incl. ResNet-18 B = 320)
  ``torch_selection`` ``torch_selection.py --quick`` (only if ``torch`` is importable)
  ``…@32k``           the same, MLP only, B = 32 768 (the selection step at scale)
  ``stage1``          ``stage1.py`` (expert-training strategies vs one model's step,
                      CIFAR and ImageNet-stem ResNets, C = 10 and 14, shrunk)
  ``stage1@per_expert`` ``stage1.py`` on one small ImageNet-stem ResNet, C = 4: time
                      per expert of ``map`` / ``loop`` / ``vmap`` (and, on CPU, ``map``
                      without canonical convolutions) vs one plain model step, and of
                      the forward programs (loss table, sliced validation) vs one
                      plain forward
  ``pipeline``        ``pipeline.py`` (decode images/s per worker count vs the images/s
                      the B = 320 train step consumes)
  ``whole_run``       ``whole_run.py`` (wall time and peak RSS of 2-step runs of the
                      vision paper configs on fake data, full-size models)
  ``planned_vs_``     ``planned_vs_measured.py`` (GPU/TPU: each CIFAR-10 program's
  ``measured``        measured time vs its planned roofline time; a note on CPU)
  ==================  =========================================================

Each writes ``<out_dir>/<name>.{json,md}`` and its output to ``<out_dir>/<name>.log``
(default ``benchmarks/results/latest/``, so the full-length results files next to it are
left alone); then ``benchmarks/results/SUMMARY.md`` collects every table with the
machine line, the command and wall time of each benchmark (``--only`` / ``--skip`` pick
a subset; a failing benchmark is reported in the summary and the others still run).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time
from typing import Any, Optional, Sequence

import harness  # this folder is sys.path[0] when run as ``python benchmarks/run_all.py``

BENCHMARKS = {  # name → flags (besides --out); the script is benchmarks/<name>.py unless
    # the name has a suffix after "@" (then benchmarks/<name before "@">.py)
    "experts": ["--build_rounds", "2"],
    "train_step": ["--all", "--resnet_rounds", "12"],
    "meta_reweight": ["--models", "mlp,cnn"],
    "scaling": [],
    "memory": [],
    "torch_selection": ["--quick"],
    "torch_selection@32k": ["--quick", "--models", "mlp", "--mlp_batch", "32768",
                            "--check_steps", "1"],
    "stage1": ["--width", "4", "--image", "32", "--batch", "16", "--rounds", "3"],
    # Issue 23: each stage-1 strategy's time per expert vs one plain model step, one small
    # conv net (catches a strategy that trains experts slower than a plain step each).
    "stage1@per_expert": ["--classes", "4", "--stems", "imagenet", "--width", "16",
                          "--image", "64", "--batch", "16", "--rounds", "5", "--no-full"],
    "pipeline": ["--images", "96", "--batch", "32", "--steps", "3", "--step_rounds", "2"],
    "whole_run": ["--configs", "cifar10,cinic10,clothing1m", "--timeout", "900"],
    # GPU/TPU only (a note on CPU): each program of the CIFAR-10 run timed on zeros next
    # to its roofline time from the planner (python -m reducr_jax.plan).
    "planned_vs_measured": ["--config", "configs/cifar10.py", "--calls", "5"],
}
TORCH = ("torch_selection", "torch_selection@32k")


def torch_available() -> bool:
  """Whether ``torch`` can be imported (checked without importing it)."""
  return importlib.util.find_spec("torch") is not None


def run_one(name: str, flags: Sequence[str], out_dir: pathlib.Path,
            timeout: float) -> dict[str, Any]:
  """Runs ``benchmarks/<name>.py`` with ``flags`` → status, wall time, command, table."""
  out = out_dir / f"{name.replace('@', '_')}.json"
  argv = [f"benchmarks/{name.split('@')[0]}.py", *flags, "--out", str(out)]
  command = "python " + " ".join(argv[:-2])
  print(f"== {command}", flush=True)
  start = time.perf_counter()
  try:
    proc = harness.run_python(argv, timeout=timeout)
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    log = proc.stdout + proc.stderr
  except Exception as e:  # pylint: disable=broad-except  (a timeout: report, go on)
    status, log = f"failed ({type(e).__name__})", str(e)
  seconds = time.perf_counter() - start
  out.with_suffix(".log").write_text(log)
  table = out.with_suffix(".md").read_text() if status == "ok" else ""
  print(f"   {status} in {seconds:.0f} s", flush=True)
  if status != "ok":
    print(log[-2000:], flush=True)
  return {"name": name, "command": command, "status": status, "seconds": seconds,
          "table": table}


def summary(results: list[dict[str, Any]], info: dict[str, Any],
            out_dir: pathlib.Path) -> str:
  """``SUMMARY.md``: the machine, a table of contents, then every benchmark's tables."""
  rel = os.path.relpath(out_dir, harness.RESULTS_DIR)
  lines = ["# Benchmarks: latest `run_all.py` run", "", harness.machine_line(info, ("flax",)),
           harness.load_line(info), "",
           f"Each benchmark's JSON, markdown and log are in `results/{rel}/`.", ""]
  lines += harness.markdown_table(
      ["benchmark", "command", "status", "wall s"],
      [[r["name"], f"`{r['command']}`", r["status"], f"{r['seconds']:.0f}"] for r in results],
      "lllr")
  for r in results:
    lines += ["", f"## {r['name']}", "", f"`{r['command']}` — {r['status']}, "
              f"{r['seconds']:.0f} s", ""]
    # The benchmark's own markdown, its headings pushed down to level 3 and below.
    body = (r["table"].strip() or "(no table: see the log)").splitlines()
    levels = [len(l) - len(l.lstrip("#")) for l in body if l.startswith("#")]
    shift = "#" * max(0, 3 - min(levels)) if levels else ""
    lines += [(shift + l if l.startswith("#") else l) for l in body]
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None):
  """Command-line flags."""
  p = harness.argument_parser(__doc__)
  p.add_argument("--only", type=harness.comma_list, default="",
                 help=f"run only these, among {', '.join(BENCHMARKS)}")
  p.add_argument("--skip", type=harness.comma_list, default="", help="skip these")
  p.add_argument("--out_dir", default=str(harness.RESULTS_DIR / "latest"),
                 help="where each benchmark's results go")
  p.add_argument("--summary", default=str(harness.RESULTS_DIR / "SUMMARY.md"))
  p.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark")
  args = p.parse_args(argv)
  for name in args.only + args.skip:
    if name not in BENCHMARKS:
      p.error(f"--only/--skip entries must be among {list(BENCHMARKS)}, got {name!r}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs the benchmarks in turn and writes the summary."""
  args = parse_args(argv)
  out_dir = pathlib.Path(args.out_dir).resolve()
  out_dir.mkdir(parents=True, exist_ok=True)
  info = harness.machine_info(("optax",))
  start = time.perf_counter()
  results = []
  for name, flags in BENCHMARKS.items():
    if (args.only and name not in args.only) or name in args.skip:
      continue
    if name in TORCH and not torch_available():
      print(f"== {name}: skipped (torch is not installed)", flush=True)
      results.append({"name": name, "command": "python benchmarks/torch_selection.py "
                                               + " ".join(flags),
                      "status": "skipped (no torch)", "seconds": 0.0, "table": ""})
      continue
    results.append(run_one(name, flags, out_dir, args.timeout))
  harness.finish_info(info, start)
  path = pathlib.Path(args.summary)
  path.write_text(summary(results, info, out_dir))
  print(f"wrote {path} ({info['total_s']:.0f} s in all)")


if __name__ == "__main__":
  main()
