"""REDUCR train step vs uniform train step: measured time ratio vs FLOP-predicted ratio.

Same model, same large batch, one device, side by side in one run (interleaved rounds,
median per variant). The predicted ratio is ``flops(variant) / flops(uniform)`` from XLA's
cost analysis of the compiled steps, i.e. (forward on B [+ C expert forwards] + forward and
backward on k) / (forward and backward on k).

  python benchmarks/train_step.py [--config=configs/default.py] [--rounds=30]

Writes ``benchmarks/results/train_step_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

import harness  # this folder is sys.path[0] when run as ``python benchmarks/train_step.py``
from reducr_jax import configuration
from reducr_jax import experts
from reducr_jax import models
from reducr_jax import train

HERE = os.path.dirname(os.path.abspath(__file__))


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
    # vmap, not the CPU default lax.map: XLA's cost analysis counts a lax.map body once,
    # not C times, so the FLOP prediction would be C× too low. For the MLP vmap is also
    # the fastest CPU strategy (benchmarks/experts.py).
    strategy = "vmap"
    ref_loss_fn = lambda p, x, y: experts.expert_losses(apply_fn, p, x, y, strategy)  # noqa: E731
    ref_params = flax.jax_utils.replicate(
        experts.init_stacked(init_fn, jax.random.PRNGKey(2), num_classes), devices)
  cfg = train.StepConfig.from_config(config, num_classes, 1, reference)
  step = train.make_train_step(apply_fn, ref_loss_fn, tx, cfg, devices)
  p_state = flax.jax_utils.replicate(state, devices)
  p_batch = jax.tree.map(lambda a: a[None], batch)
  return step, p_state, p_batch, ref_params


def stepper(step: Callable, p_state: Any, p_batch: Any, ref: Any) -> Callable[[], Any]:
  """A function of no arguments that runs one train step from the state the last call left.

  Returns ``(state, metrics)``, so waiting for it waits for the whole step.
  """

  def call():
    nonlocal p_state
    p_state, metrics = step(p_state, p_batch, ref)
    return p_state, metrics

  return call


def main() -> None:
  """Times every variant's step, prints and writes the results."""
  parser = harness.argument_parser(__doc__)
  parser.add_argument("--config", default=os.path.join(HERE, "..", "configs", "default.py"))
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--steps_per_round", type=int, default=10)
  parser.add_argument("--input_dim", type=int, default=40)
  harness.add_out_flag(parser, "benchmarks/results/train_step_<backend>.json")
  args = parser.parse_args()
  config = configuration.load_config(args.config)
  info = harness.machine_info()
  start = time.perf_counter()
  variants = ["uniform", "train_loss", "rho_loss (table)", "reducr (table)",
              "reducr (online experts)"]
  calls, flops = {}, {}
  for v in variants:
    step, p_state, p_batch, ref = build(config, v, 10, args.input_dim)
    flops[v] = harness.flops(step, p_state, p_batch, ref)
    calls[v] = stepper(step, p_state, p_batch, ref)
    harness.time_call(calls[v], 3)                       # compile + warm up
  # Interleaved in a fixed order, each timing steps_per_round steps carrying the state.
  times = harness.round_robin(calls, args.rounds, None, args.steps_per_round)
  harness.finish_info(info, start)
  base_t, base_f = np.median(times["uniform"]), flops["uniform"]
  rows = []
  for v in variants:
    t = float(np.median(times[v]))
    rows.append({"variant": v, "ms": 1e3 * t, "measured_ratio": t / base_t,
                 "flops": flops[v], "flop_ratio": flops[v] / base_f,
                 "measured_over_predicted": (t / base_t) / (flops[v] / base_f)})
  meta = {**info, "batch_size": config.batch_size, "k": configuration.num_selected(config),
          "model": config.model.to_dict(), "rounds": args.rounds}
  lines = [f"REDUCR step vs uniform step — {meta['device_kind']} ({meta['backend']}), "
           f"B={meta['batch_size']}, k={meta['k']}, model {meta['model']}", "",
           "| variant | ms/step | measured ratio | FLOP ratio | measured / predicted |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['variant']} | {r['ms']:.3f} | {r['measured_ratio']:.2f} | "
            f"{r['flop_ratio']:.2f} | {r['measured_over_predicted']:.2f} |" for r in rows]
  table = "\n".join(lines) + "\n"
  harness.write_results(args.out, f"train_step_{meta['backend']}",
                        {"meta": meta, "rows": rows}, table)


if __name__ == "__main__":
  main()
