"""Meta-reweighting (Ren et al.) and Group DRO train steps as ratios to a plain step.

For each model (an MLP 2×256 on 40 features, and optionally a small CNN on 32×32×3) and
the same batch (n train + m validation examples, 10 classes), these jitted steps are timed
side by side in one process:

  * ``plain``       — the baseline: gradient of the mean cross-entropy on the training
    batch and an SGD update;
  * ``meta``        — :func:`reducr_jax.meta_reweight.example_weights` (virtual SGD step,
    validation gradient, ε-gradient by nested ``jax.grad``) followed by the gradient of
    the weighted loss ``Σ w_i ℓ_i`` and an SGD update;
  * ``weights``     — the weights alone (the meta step without its training update);
  * ``meta_jvp``    — analysis only: the same weights from the first-order closed form
    ``g_i = −lr·⟨∇L_val(θ), ∇ℓ_i(θ)⟩`` (exact for a virtual SGD step at ε = 0) computed
    as one ``jax.jvp`` of the training losses, then the same training update; it shows
    what the nested ``jax.grad`` costs over the minimum;
  * ``group_dro``   — :func:`reducr_jax.group_dro.robust_loss` (update q, q-weighted
    per-class loss), its gradient and an SGD update.

Every step is compiled and warmed up first, then the variants run in round-robin, in a
freshly shuffled order each round, each timed call being ``--calls`` back-to-back steps
followed by ``block_until_ready``. Reported: ``median(variant) / median(plain)`` over the
same rounds, the ratio of minima, and the FLOP ratio from XLA's cost analysis of the
compiled steps (what the ratio would be if time were proportional to FLOPs).

Run (about a minute for the MLP on 2 CPU cores; ``--models mlp,cnn`` adds the CNN)::

  python benchmarks/meta_reweight.py --models mlp,cnn

Writes ``benchmarks/results/meta_reweight_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import time
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax import group_dro
from reducr_jax import meta_reweight
from reducr_jax.models.mlp import MLP

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10
VARIANTS = ("plain", "meta", "weights", "meta_jvp", "group_dro")


class SmallCNN(nn.Module):
  """3×3 conv + ReLU blocks, 2×2 average pooling between them, global mean, Dense."""
  features: Sequence[int] = (8, 16, 32)
  num_outputs: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.features):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      if i < len(self.features) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return nn.Dense(self.num_outputs)(x.mean(axis=(1, 2)))


def make_model(name: str, cnn_features: Sequence[int]) -> tuple[nn.Module, tuple[int, ...]]:
  if name == "mlp":
    return MLP((256, 256), NUM_CLASSES), (40,)
  if name == "cnn":
    return SmallCNN(tuple(cnn_features)), (32, 32, 3)
  raise ValueError(f"unknown model {name!r}")


def make_steps(model: nn.Module, lr: float, eta: float) -> dict[str, Callable]:
  """The jitted steps; each takes ``(params, log_q, train, val)``."""

  def losses(params, batch):
    logits = model.apply({"params": params}, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])

  def sgd(params, grads):
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)

  def plain(params, log_q, train, val):
    del val
    grads = jax.grad(lambda p: jnp.mean(losses(p, train)))(params)
    return sgd(params, grads), log_q

  def weights(params, log_q, train, val):
    del log_q
    return meta_reweight.example_weights(losses, params, train, val, lr)

  def meta(params, log_q, train, val):
    w = meta_reweight.example_weights(losses, params, train, val, lr)
    grads = jax.grad(lambda p: meta_reweight.weighted_loss(losses(p, train), w))(params)
    return sgd(params, grads), log_q

  def meta_jvp(params, log_q, train, val):
    # Analysis only: the first-order closed form g_i = −lr·⟨∇L_val(θ), ∇ℓ_i(θ)⟩ (exact for
    # a virtual SGD step at ε = 0) as one JVP of the training losses along ∇L_val.
    g_val = jax.grad(lambda p: jnp.mean(losses(p, val)))(params)
    _, dots = jax.jvp(lambda p: losses(p, train), (params,), (g_val,))
    w = meta_reweight.weights_from_meta_gradient(-lr * dots)
    grads = jax.grad(lambda p: meta_reweight.weighted_loss(losses(p, train), w))(params)
    return sgd(params, grads), w

  def dro(params, log_q, train, val):
    del val

    def loss_fn(p):
      return group_dro.robust_loss(losses(p, train), train["y"], log_q, eta, NUM_CLASSES)

    grads, new_log_q = jax.grad(loss_fn, has_aux=True)(params)
    return sgd(params, grads), new_log_q

  return {"plain": jax.jit(plain), "meta": jax.jit(meta), "weights": jax.jit(weights),
          "meta_jvp": jax.jit(meta_jvp), "group_dro": jax.jit(dro)}


def flops(fn, *args) -> float:
  """FLOPs of the compiled ``fn(*args)`` from XLA's cost analysis (NaN if unavailable)."""
  cost = fn.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def round_robin(calls: dict[str, Callable[[], Any]], rounds: int, calls_per_timing: int,
                rng: np.random.Generator) -> dict[str, list[float]]:
  """Seconds per call of each function, ``rounds`` timings each, shuffled every round."""
  names = list(calls)
  times: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(rounds):
    for i in rng.permutation(len(names)):
      fn = calls[names[i]]
      start = time.perf_counter()
      for _ in range(calls_per_timing):
        out = fn()
      jax.block_until_ready(out)
      times[names[i]].append((time.perf_counter() - start) / calls_per_timing)
  return times


def bench_model(name: str, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
  """All variants for one model → result rows."""
  model, shape = make_model(name, args.cnn_features)
  data_rng = np.random.default_rng(args.seed)
  batch = lambda size: {  # noqa: E731
      "x": jnp.asarray(data_rng.normal(size=(size,) + shape), jnp.float32),
      "y": jnp.asarray(data_rng.integers(0, NUM_CLASSES, size), jnp.int32)}
  train, val = batch(args.train_size), batch(args.val_size)
  params = model.init(jax.random.key(args.seed), train["x"][:1])["params"]
  log_q = group_dro.init(NUM_CLASSES)
  steps = make_steps(model, args.lr, args.eta)
  operands = (params, log_q, train, val)

  compile_s, flop = {}, {}
  for v, fn in steps.items():
    start = time.perf_counter()
    flop[v] = flops(fn, *operands)                        # lowers and compiles
    compile_s[v] = time.perf_counter() - start
  # The unit for the FLOP breakdown: one forward pass + loss on the training batch.
  forward = jax.jit(lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b["x"]), b["y"]))
  forward_flops = flops(forward, params, train)
  w = np.asarray(steps["weights"](*operands))
  assert np.all(np.isfinite(w)) and abs(w.sum() - 1.0) < 1e-4, "weights are not normalised"
  jvp_max_diff = float(np.abs(np.asarray(steps["meta_jvp"](*operands)[1]) - w).max())
  assert jvp_max_diff < 1e-4, f"meta_jvp weights differ from example_weights by {jvp_max_diff}"

  calls = {v: functools.partial(fn, *operands) for v, fn in steps.items()}
  for fn in calls.values():                               # warm, after all compiles
    jax.block_until_ready(fn())
  per_timing = args.calls if args.calls else (10 if name == "mlp" else 1)
  times = round_robin(calls, args.rounds, per_timing, rng)
  base = np.median(times["plain"])
  rows = []
  for v in VARIANTS:
    ms = np.asarray(times[v]) * 1e3
    rows.append({
        "model": name, "variant": v, "train_size": args.train_size,
        "val_size": args.val_size, "median_ms": float(np.median(ms)),
        "p25_ms": float(np.percentile(ms, 25)), "p75_ms": float(np.percentile(ms, 75)),
        "min_ms": float(ms.min()), "n_timings": len(ms), "calls_per_timing": per_timing,
        "ratio": float(np.median(times[v]) / base),
        "ratio_of_mins": float(np.min(times[v]) / np.min(times["plain"])),
        "flops": flop[v], "flop_ratio": flop[v] / flop["plain"],
        "flops_in_train_forwards": flop[v] / forward_flops, "compile_s": compile_s[v],
        "nonzero_weights": int(np.count_nonzero(w)) if v in ("meta", "weights") else None,
        "max_abs_weight_diff": jvp_max_diff if v == "meta_jvp" else None,
    })
  return rows


def machine_info() -> dict[str, Any]:
  dev = jax.devices()[0]
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  try:
    load = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    load = None
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "python": platform.python_version(), "backend": jax.default_backend(),
      "device_kind": dev.device_kind, "cpu_count": os.cpu_count(), "cpu_usable": usable,
      "platform": platform.platform(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "loadavg_start": load,
  }


def markdown(rows: list[dict], info: dict, args: argparse.Namespace) -> str:
  lines = [
      f"Machine: backend `{info['backend']}`, device `{info['device_kind']}`, "
      f"{info['cpu_usable']} usable CPU cores (of {info['cpu_count']}), jax {info['jax']}, "
      f"flax {info['flax']}, optax {info['optax']}; {info['date']}.",
      f"Batch: {args.train_size} train + {args.val_size} validation examples, 10 classes; "
      f"{args.rounds} interleaved rounds; CNN features {tuple(args.cnn_features)}; "
      f"load average (1/5/15 min) {info['loadavg_start']} at start, "
      f"{info['loadavg_end']} at end; total {info['total_s']:.0f} s.",
      "",
      "| model | step | ms (median) | ratio to plain | ratio of minima | FLOP ratio "
      "| FLOPs in train forwards | compile s |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(f"| {r['model']} | {r['variant']} | {r['median_ms']:.3f} | "
                 f"{r['ratio']:.2f} | {r['ratio_of_mins']:.2f} | {r['flop_ratio']:.2f} | "
                 f"{r['flops_in_train_forwards']:.2f} | {r['compile_s']:.2f} |")
  lines += ["", "Where the meta step's FLOPs go (in forward passes + loss on the training "
            "batch, from the rows above):", ""]
  for model in dict.fromkeys(r["model"] for r in rows):
    f = {r["variant"]: r["flops_in_train_forwards"] for r in rows if r["model"] == model}
    lines.append(
        f"- {model}: plain {f['plain']:.2f} (forward + backward); meta {f['meta']:.2f} = "
        f"weights {f['weights']:.2f} + training update {f['meta'] - f['weights']:.2f}; the "
        f"weights from one JVP instead of nested `jax.grad` make the whole step "
        f"{f['meta_jvp']:.2f}. Nested `jax.grad`'s extra {f['meta'] - f['meta_jvp']:.2f} "
        f"≈ one backward pass on the training batch (plain − forward = {f['plain'] - 1:.2f}): "
        "the inner gradient ∇_θ Σ ε_i ℓ_i, identically 0 at ε = 0 (θ' = θ), which XLA "
        "cannot know.")
  lines += [
      "",
      "ratio = median(step) / median(plain) over the same interleaved rounds; ratio of "
      "minima = min / min; FLOP ratio = XLA cost-analysis FLOPs of the compiled step / "
      "those of the plain step; FLOPs in train forwards = the step's FLOPs / those of one "
      "forward pass + loss on the training batch. `weights` is the meta step without its "
      "training update; `meta_jvp` (analysis only, not a library function) is the meta step "
      "with the weights from the first-order closed form as one JVP instead of nested "
      "`jax.grad` (same weights, max abs diff in the JSON).",
  ]
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--models", default="mlp", help="comma-separated: mlp, cnn")
  p.add_argument("--train_size", type=int, default=100)
  p.add_argument("--val_size", type=int, default=100)
  p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
  p.add_argument("--calls", type=int, default=0,
                 help="steps per timing (0: 10 for the MLP, 1 for the CNN)")
  p.add_argument("--cnn_features", default="8,16,32", help="CNN conv channels")
  p.add_argument("--lr", type=float, default=0.1, help="SGD and virtual-step learning rate")
  p.add_argument("--eta", type=float, default=0.01, help="Group DRO step size")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None,
                 help="results JSON (default benchmarks/results/meta_reweight_<backend>.json); "
                      "the markdown table goes next to it with suffix .md")
  args = p.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  args.cnn_features = [int(c) for c in str(args.cnn_features).split(",") if c]
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  info = machine_info()
  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  rows = []
  for name in args.models:
    t0 = time.perf_counter()
    rows.extend(bench_model(name, args, rng))
    print(f"# {name}: {time.perf_counter() - t0:.1f}s", flush=True)
  info["total_s"] = time.perf_counter() - start
  try:
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    info["loadavg_end"] = None
  table = markdown(rows, info, args)
  print(table)
  out = (pathlib.Path(args.out) if args.out
         else RESULTS_DIR / f"meta_reweight_{info['backend']}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  flags = {k: v for k, v in vars(args).items() if k != "out"}
  out.write_text(json.dumps({"machine": info, "flags": flags, "results": rows}, indent=2) + "\n")
  out.with_suffix(".md").write_text(table)
  print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
  main()
