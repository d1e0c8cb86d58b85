"""REDUCR train step vs uniform train step: measured time ratio vs FLOP-predicted ratio.

Same model, same large batch, one device, side by side in one run (interleaved rounds,
median per variant). The predicted ratio is ``flops(variant) / flops(uniform)`` from XLA's
cost analysis of the compiled steps, i.e. (forward on B [+ C expert forwards] + forward and
backward on k) / (forward and backward on k).

  python benchmarks/train_step.py [--config=configs/default.py] [--rounds=30]

Writes ``benchmarks/results/train_step_<backend>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax import configuration
from reducr_jax import experts
from reducr_jax import models
from reducr_jax import train

HERE = os.path.dirname(os.path.abspath(__file__))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def build(config, variant: str, num_classes: int, input_dim: int):
  """(pmapped step, replicated state, sharded batch, ref params) for one variant."""
  method, reference = {"uniform": ("uniform", None), "train_loss": ("train_loss", None),
                       "reducr (table)": ("reducr", "table"),
                       "reducr (online experts)": ("reducr", "online"),
                       "rho_loss (table)": ("rho_loss", "table")}[variant]
  config = config.copy_and_resolve_references()
  config.selection.method = method
  devices = jax.local_devices()[:1]
  model = models.create_model(config.model, num_classes)
  apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  init_fn = lambda r: model.init(r, jnp.zeros((1, input_dim)))["params"]  # noqa: E731
  tx = train.make_optimizer(config.optimizer)
  state = train.init_state(jax.random.PRNGKey(0), init_fn, tx, num_classes,
                           jax.random.PRNGKey(1))
  b = config.batch_size
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(b, input_dim)).astype(np.float32),
           "y": rng.integers(0, num_classes, b).astype(np.int32)}
  ref_params, ref_loss_fn = None, None
  if reference == "table":
    width = num_classes if method == "reducr" else 1
    batch["ref_losses"] = rng.uniform(0, 2, (b, width)).astype(np.float32)
  elif reference == "online":
    strategy = experts.default_strategy()
    ref_loss_fn = lambda p, x, y: experts.expert_losses(apply_fn, p, x, y, strategy)  # noqa: E731
    ref_params = flax.jax_utils.replicate(
        experts.init_stacked(init_fn, jax.random.PRNGKey(2), num_classes), devices)
  cfg = train.StepConfig.from_config(config, num_classes, 1, reference)
  step = train.make_train_step(apply_fn, ref_loss_fn, tx, cfg, devices)
  p_state = flax.jax_utils.replicate(state, devices)
  p_batch = jax.tree.map(lambda a: a[None], batch)
  return step, p_state, p_batch, ref_params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(HERE, "..", "configs", "default.py"))
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--steps_per_round", type=int, default=10)
  parser.add_argument("--input_dim", type=int, default=40)
  args = parser.parse_args()
  config = configuration.load_config(args.config)
  variants = ["uniform", "train_loss", "rho_loss (table)", "reducr (table)",
              "reducr (online experts)"]
  built, flops = {}, {}
  for v in variants:
    step, p_state, p_batch, ref = build(config, v, 10, args.input_dim)
    flops[v] = _flops(step.lower(p_state, p_batch, ref).compile())
    for _ in range(3):                                   # compile + warm up
      p_state, m = step(p_state, p_batch, ref)
    jax.block_until_ready(m)
    built[v] = [step, p_state, p_batch, ref]
  times = {v: [] for v in variants}
  for _ in range(args.rounds):
    for v in variants:                                   # interleaved: same machine state
      step, p_state, p_batch, ref = built[v]
      t = time.perf_counter()
      for _ in range(args.steps_per_round):
        p_state, m = step(p_state, p_batch, ref)
      jax.block_until_ready((p_state, m))
      times[v].append((time.perf_counter() - t) / args.steps_per_round)
      built[v][1] = p_state
  base_t, base_f = np.median(times["uniform"]), flops["uniform"]
  rows = []
  for v in variants:
    t = float(np.median(times[v]))
    rows.append({"variant": v, "ms": 1e3 * t, "measured_ratio": t / base_t,
                 "flops": flops[v], "flop_ratio": flops[v] / base_f,
                 "measured_over_predicted": (t / base_t) / (flops[v] / base_f)})
  meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "platform": platform.platform(),
          "batch_size": config.batch_size, "k": configuration.num_selected(config),
          "model": config.model.to_dict(), "rounds": args.rounds}
  lines = [f"REDUCR step vs uniform step — {meta['device']} ({meta['backend']}), "
           f"B={meta['batch_size']}, k={meta['k']}, model {meta['model']}", "",
           "| variant | ms/step | measured ratio | FLOP ratio | measured / predicted |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['variant']} | {r['ms']:.3f} | {r['measured_ratio']:.2f} | "
            f"{r['flop_ratio']:.2f} | {r['measured_over_predicted']:.2f} |" for r in rows]
  table = "\n".join(lines)
  print(table)
  out = os.path.join(HERE, "results", f"train_step_{meta['backend']}")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  with open(out + ".md", "w") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
