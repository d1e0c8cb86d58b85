"""Memory of the compiled train step (XLA memory analysis), and what state donation saves.

Compile only, nothing runs: for each config the REDUCR step (``reducr (table)``, the
default) is built as the trainer builds it (``harness.build_train_step``) and lowered and
compiled for one device, ``step.lower(state, batch, ref).compile().memory_analysis()``:

  * ``pmap, donated`` — ``reducr_jax.train.selection_step.make_train_step`` itself (``donate_argnums=0``:
    the new state may be written into the old state's buffers, ``alias`` bytes);
  * ``pmap, not donated`` — the same ``jax.pmap`` of ``selection_step.train_step`` without donation;
  * ``jit(shard_map), donated`` / ``not donated`` — analysis only: the same
    ``selection_step.train_step`` under ``jax.jit(jax.shard_map(...))`` with the state replicated
    (``P()``, no device axis) and the batch split (``P(AXIS)``), i.e. the layout a
    ``shard_map`` trainer would use instead of ``pmap``'s stacked ``[n, ...]`` state.

Configs: ``mlp`` = ``configs/default.py`` (MLP 256-256, B = 320, float32 ``[B, 40]``);
``resnet (shrunk)`` = ``configs/cifar10.py`` as ``train_step.py`` shrinks it (width 8,
stages (1, 1, 1, 1), B = 160); ``resnet-18`` = ``configs/cifar10.py`` unchanged (width 64,
stages (2, 2, 2, 2), B = 320, k = 32; compiled only). Per-device bytes; ``peak`` =
argument + output − alias + temp (see ``harness.memory_stats``).

  python benchmarks/memory.py [--configs=mlp,resnet,resnet18] [--no_shard_map]

Writes ``benchmarks/results/memory_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any, Optional, Sequence

import flax.jax_utils
import jax
import numpy as np

import harness  # this folder is sys.path[0] when run as ``python benchmarks/memory.py``
from reducr_jax.config import configuration
from reducr_jax.train import selection_step

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs")
NAMES = ("mlp", "resnet", "resnet18")
VARIANT = "reducr (table)"


def config_for(name: str, args: argparse.Namespace) -> tuple[Any, tuple[int, ...], Any, str]:
  """``(config, input_shape, input_dtype, description)`` of one named config."""
  if name == "mlp":
    config = configuration.load_config(os.path.join(CONFIGS, "default.py"))
    return config, (40,), np.float32, "MLP (256, 256), float32 [B, 40] (configs/default.py)"
  config = configuration.load_config(os.path.join(CONFIGS, "cifar10.py"))
  if name == "resnet":
    config.model.width = args.resnet_width
    config.model.stage_sizes = tuple(args.resnet_stages)
    config.batch_size = args.resnet_batch
    desc = "ResNet-18 shrunk (as train_step.py)"
  elif name == "resnet18":
    desc = "ResNet-18 (configs/cifar10.py)"
  else:
    raise ValueError(f"--configs entries must be among {list(NAMES)}, got {name!r}")
  m = config.model
  return (config, (32, 32, 3), np.uint8,
          f"{desc}: width {m.width}, stages {tuple(m.stage_sizes)}, uint8 [B, 32, 32, 3]")


def shard_map_step(bench: harness.StepBench, donate: bool):
  """``(jit(shard_map(train_step)), state, batch)``: replicated state, split batch."""
  mesh = jax.sharding.Mesh(np.array(bench.devices), (selection_step.AXIS,))
  spec = jax.sharding.PartitionSpec
  fn = functools.partial(selection_step.train_step, model=bench.fns, ref_loss_fn=bench.ref_loss_fn,
                         tx=bench.tx, cfg=bench.cfg)
  step = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec(), spec(selection_step.AXIS), spec()),
                               out_specs=(spec(), spec()), check_vma=False),
                 donate_argnums=(0,) if donate else ())
  state = flax.jax_utils.unreplicate(bench.state)
  batch = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), bench.batch)
  ref = None if bench.ref is None else flax.jax_utils.unreplicate(bench.ref)
  return step, (state, batch, ref)


def bench_config(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
  """Compiles every build of one config → rows of memory statistics."""
  config, shape, dtype, desc = config_for(name, args)
  rows = []
  forms = [("pmap", True), ("pmap", False)]
  if args.shard_map:
    forms += [("jit(shard_map)", True), ("jit(shard_map)", False)]
  for form, donate in forms:
    bench = harness.build_train_step(config, VARIANT, shape, dtype, harness.NUM_CLASSES,
                                     donate=donate if form == "pmap" else True)
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(bench.state)) // len(bench.devices)
    if form == "pmap":
      step, operands = bench.step, (bench.state, bench.batch, bench.ref)
    else:
      step, operands = shard_map_step(bench, donate)
    t0 = time.perf_counter()
    compiled = step.lower(*operands).compile()
    compile_s = time.perf_counter() - t0
    stats = harness.memory_stats(compiled)
    rows.append({"config": name, "description": desc, "form": form, "donated": donate,
                 "batch_size": config.batch_size, "k": configuration.num_selected(config),
                 "state_bytes": state_bytes, "compile_s": compile_s,
                 "flops": harness.compiled_flops(compiled), **stats})
    print(f"# {name} {form} donated={donate}: compiled in {compile_s:.1f} s; "
          f"{ {k: harness.mib(v) for k, v in stats.items()} } MiB", flush=True)
    del bench, compiled
  return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
  """The memory table, with the machine and the configs above and the savings below."""
  lines = [harness.machine_line(info, ("flax", "optax")), harness.load_line(info), ""]
  for name in dict.fromkeys(r["config"] for r in rows):
    r = next(r for r in rows if r["config"] == name)
    lines.append(f"- **{name}**: {r['description']}; B = {r['batch_size']}, k = {r['k']}, "
                 f"C = 10; train state {harness.mib(r['state_bytes'])} MiB.")
  lines.append("")
  header = ["config", "step", "donated", "argument MiB", "output MiB", "alias MiB",
            "temp MiB", "peak MiB", "compile s"]
  table = [[r["config"], r["form"], "yes" if r["donated"] else "no", harness.mib(r["argument"]),
            harness.mib(r["output"]), harness.mib(r["alias"]), harness.mib(r["temp"]),
            harness.mib(r["peak"]), f"{r['compile_s']:.1f}"] for r in rows]
  lines += harness.markdown_table(header, table, "lllrrrrrr")
  lines += ["", "Per device (one device here). alias = output bytes written into donated "
            "argument buffers; peak = argument + output − alias + temp. Donation saves "
            "(peak not donated − peak donated):", ""]
  for name in dict.fromkeys(r["config"] for r in rows):
    for form in dict.fromkeys(r["form"] for r in rows if r["config"] == name):
      pair = {r["donated"]: r for r in rows if r["config"] == name and r["form"] == form}
      if True in pair and False in pair:
        saved = pair[False]["peak"] - pair[True]["peak"]
        extra = pair[True]["temp"] - pair[False]["temp"]
        lines.append(f"- {name}, {form}: {harness.mib(saved)} MiB of "
                     f"{harness.mib(pair[False]['peak'])} ({saved / pair[False]['peak']:.0%}); "
                     f"alias {harness.mib(pair[True]['alias'])} MiB, but temp "
                     f"{'+' if extra >= 0 else '−'}{harness.mib(abs(extra))} MiB with donation.")
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = harness.argument_parser(__doc__)
  p.add_argument("--configs", type=harness.comma_list, default=",".join(NAMES),
                 help=f"comma-separated among {', '.join(NAMES)}")
  p.add_argument("--resnet_width", type=int, default=8, help="shrunk ResNet width")
  p.add_argument("--resnet_stages", type=harness.int_list, default="1,1,1,1",
                 help="shrunk ResNet blocks per stage")
  p.add_argument("--resnet_batch", type=int, default=160, help="shrunk ResNet B")
  p.add_argument("--no_shard_map", dest="shard_map", action="store_false",
                 help="skip the jit(shard_map) analysis builds")
  harness.add_out_flag(p, "benchmarks/results/memory_<backend>.json")
  args = p.parse_args(argv)
  for name in args.configs:
    if name not in NAMES:
      p.error(f"--configs entries must be among {list(NAMES)}, got {name!r}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Compiles every config's step, prints and writes the memory table."""
  args = parse_args(argv)
  info = harness.machine_info(("optax",))
  start = time.perf_counter()
  rows = []
  for name in args.configs:
    rows += bench_config(name, args)
  harness.finish_info(info, start)
  harness.write_results(args.out, f"memory_{info['backend']}",
                        {"meta": {**info, "flags": harness.flag_values(args)}, "rows": rows},
                        markdown(rows, info))


if __name__ == "__main__":
  main()
