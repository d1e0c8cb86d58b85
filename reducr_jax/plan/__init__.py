"""Plan a run before paying for it: compile every program for a TPU topology, from shapes.

  python -m reducr_jax.plan --config=configs/clothing1m.py --topology=v5e:2x4 \\
      [--output=plan.json] [--config.experts.batch_size=160 ...]

On a CPU-only machine with libtpu installed (``pip install '.[tpu]'``) this builds, from
shapes only (no data on disk: split sizes from the releases' known sizes,
:mod:`reducr_jax.plan.plan_inputs`), exactly the programs the run compiles
(:mod:`reducr_jax.plan.plan_programs`): ``stage1_expert_step`` with the strategy the run's
chooser picks on that hardware, ``expert_validation``, ``loss_table``, the pmapped
``train_step`` and ``eval_step`` (those the config runs), compiles each for the topology
and prints one table: HBM per chip (arguments, temporaries, peak, the limit), FLOPs and
bytes per chip and call (XLA's ``cost_analysis``, loop bodies multiplied out), the roofline
seconds per call at the chip's published peaks (:mod:`reducr_jax.train.chips`), the calls in the
whole run, and so the wall time and chip-hours per stage and in total. Then the input rate:
examples/s per chip the train step consumes at its roofline, against the examples/s one
host core decodes for the dataset.

The roofline is a lower bound (peak FLOP/s and HBM bandwidth, no overlap loss, no input
stalls, no host work): real steps are slower; ``benchmarks/run_all.py`` prints measured
against planned step times on an accelerator.

Pretrained weights are not read (``config.model.pretrained`` is ignored: a ResNet without
an explicit ``width`` / ``stage_sizes`` is ResNet-18's, BERT is bert-base's config), nor
the tokenizer (``config.dataset.tokenizer``: text is ``max_length`` token ids).

When a program fits no strategy (or batch) it exits with status 2 and one line naming the
program, its peak, the limit and what would fit.

``--output`` writes ``plan.json``: ``{"topology", "chips", "hbm_bytes_per_chip",
"programs": [{"name", "strategy", "calls", "peak_bytes_per_chip", "flops_per_chip",
"bytes_accessed_per_chip", "seconds_per_call", "fits"}], "total_seconds", "chip_hours",
"fits"}`` (README "Planning a cluster run").
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")   # compile for the topology, run nothing

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from reducr_jax import cli  # noqa: E402  pylint: disable=wrong-import-position

TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice to plan for: v5e:1x1, v5e:2x2, "
                               "v5e:2x4, v5e:4x4, v6e:2x2, v4:2x2x1, v5:2x2x1 (v5p-8), ...")
OUTPUT = flags.DEFINE_string("output", None, "Write the plan as JSON here.")

STAGE_OF = {"stage1_expert_step": "stage 1", "expert_validation": "stage 1",
            "loss_table": "stage 1", "train_step": "stage 2", "eval_step": "stage 2"}
GIB = 1 << 30


def make_plan(config, topology_name: str) -> tuple[dict, dict]:
  """``(plan.json dict, extras)`` of ``config`` on TPU slice ``topology_name``.

  ``extras``: ``chip`` (:class:`reducr_jax.train.chips.Chip`), ``limit_bytes``, ``programs``
  (:class:`reducr_jax.plan.plan_programs.Program`), ``stage_seconds``, ``input`` (examples/s
  per chip at the roofline, decode rate per core, cores per chip) and ``compile_seconds``.

  Raises:
    ConfigError (one line): a bad field or topology, libtpu missing, or nothing fits
      (:class:`reducr_jax.train.stage1_memory.NothingFits`).
  """
  from reducr_jax.config import configuration  # pylint: disable=import-outside-toplevel
  from reducr_jax.plan import plan_inputs  # pylint: disable=import-outside-toplevel
  from reducr_jax.plan import plan_programs  # pylint: disable=import-outside-toplevel
  from reducr_jax.config import size_checks  # pylint: disable=import-outside-toplevel
  from reducr_jax.train import topology  # pylint: disable=import-outside-toplevel
  from reducr_jax.train import stage1_memory  # pylint: disable=import-outside-toplevel
  topology.parse_name(topology_name)
  if config.model.get("pretrained"):   # weights are not needed, only their shapes
    config = configuration.with_overrides(config, {"model.pretrained": ""})
  if config.dataset.get("tokenizer"):  # nor the tokenizer: token ids' shape
    config = configuration.with_overrides(
        config, {"dataset.tokenizer": os.path.dirname(os.path.abspath(__file__))})
  t0 = time.perf_counter()
  topo = topology.get(topology_name)
  n = topo.num_chips
  configuration.validate_config(config, n)
  splits = plan_inputs.abstract_splits(config)
  size_checks.check_batch_sizes(config, splits, n)
  programs = plan_programs.build_all(config, splits, topo.devices, "tpu")
  limit = stage1_memory.memory_budget_bytes(config, topo.devices[0])
  rows, stages, total = [], {}, 0.0
  for p in programs:
    seconds = topo.chip.roofline_seconds(p.flops, p.bytes_accessed)
    peak = p.memory.get("peak", 0)
    rows.append({"name": p.name, "strategy": p.strategy, "calls": p.calls,
                 "peak_bytes_per_chip": peak, "flops_per_chip": p.flops,
                 "bytes_accessed_per_chip": p.bytes_accessed, "seconds_per_call": seconds,
                 "fits": bool(peak <= limit)})
    stages[STAGE_OF[p.name]] = stages.get(STAGE_OF[p.name], 0.0) + seconds * p.calls
    total += seconds * p.calls
  plan = {"topology": topology_name, "chips": n, "hbm_bytes_per_chip": topo.chip.hbm_bytes,
          "programs": rows, "total_seconds": total, "chip_hours": total * n / 3600,
          "fits": all(r["fits"] for r in rows)}
  step = next(r for r in rows if r["name"] == "train_step")
  consumed = config.batch_size / n / step["seconds_per_call"]
  decode = plan_inputs.decode_per_core(config)
  extras = {"chip": topo.chip, "limit_bytes": limit, "programs": programs,
            "stage_seconds": stages, "hosts": topo.num_hosts,
            "input": {"examples_per_s_per_chip": consumed, "decode_per_core": decode,
                      "cores_per_chip": None if decode is None else consumed / decode},
            "compile_seconds": time.perf_counter() - t0}
  return plan, extras


def format_plan(plan: dict, extras: dict) -> str:
  """The plan as one text table plus the stage totals and the input line."""
  chip = extras["chip"]
  head = (f"{'program':<19} {'strategy':<16} {'args':>6} {'temps':>6} {'peak':>6} "
          f"{'limit':>6} {'GFLOP':>9} {'GB':>7} {'s/call':>9} {'calls':>9} {'hours':>8} fits")
  lines = [f"plan: {plan['topology']} ({plan['chips']} {chip.name} chips, "
           f"{extras['hosts']} host(s)); HBM GiB per chip; FLOPs and bytes per chip and "
           f"call; roofline at {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, "
           f"{chip.hbm_bandwidth / 1e9:.0f} GB/s", head, "-" * len(head)]
  for row, p in zip(plan["programs"], extras["programs"]):
    mem = p.memory
    lines.append(
        f"{row['name']:<19} {row['strategy']:<16} {mem.get('argument', 0) / GIB:6.2f} "
        f"{mem.get('temp', 0) / GIB:6.2f} {row['peak_bytes_per_chip'] / GIB:6.2f} "
        f"{extras['limit_bytes'] / GIB:6.2f} {row['flops_per_chip'] / 1e9:9.1f} "
        f"{row['bytes_accessed_per_chip'] / 1e9:7.2f} {row['seconds_per_call']:9.2e} "
        f"{row['calls']:9d} {row['seconds_per_call'] * row['calls'] / 3600:8.3f} "
        f"{'yes' if row['fits'] else 'NO'}")
  for stage, seconds in sorted(extras["stage_seconds"].items()):
    lines.append(f"{stage}: {seconds / 3600:.3f} h wall, "
                 f"{seconds * plan['chips'] / 3600:.3f} chip-hours")
  lines.append(f"total: {plan['total_seconds'] / 3600:.3f} h wall, "
               f"{plan['chip_hours']:.3f} chip-hours at the roofline (a lower bound); "
               f"fits: {'yes' if plan['fits'] else 'NO'}")
  inp = extras["input"]
  line = (f"input: the train step consumes {inp['examples_per_s_per_chip']:,.0f} examples/s "
          "per chip at its roofline; ")
  if inp["decode_per_core"] is None:
    line += "this dataset is held in memory (no decode): the host gathers rows"
  else:
    line += (f"one host core decodes ~{inp['decode_per_core']:.0f}/s "
             f"(benchmarks/pipeline.py): ~{inp['cores_per_chip']:.0f} host cores per chip")
  lines.append(line)
  lines.append(f"(compiled in {extras['compile_seconds']:.0f} s here)")
  return "\n".join(lines)


def main(argv):
  del argv
  if not TOPOLOGY.value:
    cli.fail("--topology is required, e.g. --topology=v5e:2x2")
  plan, extras = make_plan(cli.config(), TOPOLOGY.value)
  print(format_plan(plan, extras), flush=True)
  if OUTPUT.value:
    with open(OUTPUT.value, "w") as f:
      json.dump(plan, f, indent=1)

# ``python -m reducr_jax.plan`` runs :func:`main` from ``plan/__main__.py``.
