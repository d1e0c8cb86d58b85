"""The input pipeline: images/s it decodes vs images/s the train step consumes.

1. **Supply.** A fake Clothing1M release (``tests/fakes.py``) is prepared by the real TFDS
   builder (224×224 JPEGs in ``array_record``) and read as the trainer reads it: the
   batch of step t is ``x[batch_indices(seed, t, N, B)]`` of the lazy pool
   (:mod:`reducr_jax.data.random_access`), built ahead by
   :func:`reducr_jax.data.pipeline.batches` with ``data_workers`` = 0 (one background
   thread; rows decoded by the shared thread pool) and 1, 2, … worker processes up to the
   machine's cores. Images/s from the first batch received to the last (steady state;
   the workers' start-up is reported separately). Also PIL's decode of one image, and
   ``simplejpeg``'s if it is installed.
2. **Demand.** The library's REDUCR train step (``harness.build_train_step``, precomputed
   table, C = 14, B = 320, k = 32, 224×224×3 uint8, flip augmentation) on a shrunk
   ImageNet-stem ResNet, timed here → images/s it consumes; and the XLA FLOP count of the
   same step for the full ResNet-18 → images/s at an accelerator's sustained FLOP rate
   (``--accelerator_tflops``).

It then says how many decode cores keep the step fed.

  python benchmarks/pipeline.py [--images 192] [--batch 64] [--steps 6]
"""

from __future__ import annotations

import io
import pathlib
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

import harness
from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.data import clothing1m
from reducr_jax.data import pipeline
from reducr_jax.data import real_specs

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import fakes  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def fake_pool(tmp: pathlib.Path, images: int):
  """The prepared fake Clothing1M pool: (lazy x uint8 [n, 224, 224, 3], prepare seconds)."""
  sizes = {"clean_train": 4, "clean_val": 4, "clean_test": 4, "noisy_train": images}
  manual = fakes.write_clothing1m(tmp, sizes)[0]
  cfg = real_specs.config_for("clothing1m", data_dir=str(tmp / "tfds"), manual_dir=str(manual))
  t0 = time.perf_counter()
  x = clothing1m.load(cfg)["noisy_train"][0]
  return x, time.perf_counter() - t0


def supply(x, batch: int, steps: int, workers: int) -> dict:
  """Images/s of :func:`pipeline.batches` with ``workers`` over ``steps`` batches."""
  n = len(x)
  make = lambda t: x[data.batch_indices(0, t, n, batch)]  # noqa: E731
  config = ml_collections.ConfigDict({"data_workers": workers, "prefetch": 2})
  t0 = time.perf_counter()
  it = pipeline.batches(config, make, 0, steps + 1)
  next(it)
  first = time.perf_counter() - t0
  t1 = time.perf_counter()
  for _ in it:
    pass
  steady = time.perf_counter() - t1
  return {"workers": workers, "first_batch_s": first, "images_per_s": steps * batch / steady}


def decode_one(x) -> dict:
  """ms to decode one stored 224×224 JPEG with PIL (and simplejpeg if installed)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  src = x.sources[0]
  record = src._fetch(np.array([0]))[0]  # pylint: disable=protected-access
  blob = record["image"] if isinstance(record, dict) else record
  out = {}
  if isinstance(blob, (bytes, bytearray)):
    def pil():
      return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    fns = {"PIL": pil}
    try:
      import simplejpeg  # pylint: disable=g-import-not-at-top
      fns["simplejpeg"] = lambda: simplejpeg.decode_jpeg(blob)
    except ImportError:
      pass
    for name, fn in fns.items():
      fn()
      t = [harness.time_call(fn, 20) for _ in range(5)]
      out[name] = float(np.median(t) * 1e3)
  else:                                  # the source decodes for us: time the whole read
    t = [harness.time_call(lambda: src.read(np.array([0])), 20) for _ in range(5)]
    out["source read+decode"] = float(np.median(t) * 1e3)
  return out


def demand(args) -> dict:
  """Images/s of the REDUCR step: shrunk ResNet timed, full ResNet-18 from FLOPs."""
  config = configuration.load_config(str(pathlib.Path(__file__).resolve().parent.parent
                                         / "configs" / "clothing1m.py"))
  config.model.pretrained = ""
  shape = (224, 224, 3)
  out = {}
  for name, width, stages in (("shrunk", args.width, tuple(args.stages)),
                              ("resnet18", 64, (2, 2, 2, 2))):
    config.model.width, config.model.stage_sizes = width, stages
    bench = harness.build_train_step(config, "reducr (table)", shape, np.uint8, 14)
    lowered = bench.step.lower(bench.state, bench.batch, bench.ref)
    if name == "resnet18":
      cost = lowered.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost.get("flops", float("nan")))
      out[name] = {"flops": flops, "images_per_s": config.batch_size / (
          flops / (args.accelerator_tflops * 1e12))}
      continue
    state = [bench.state]

    def call():
      state[0], m = bench.step(state[0], bench.batch, bench.ref)
      return m
    jax.block_until_ready(call())
    t = [harness.time_call(call) for _ in range(args.step_rounds)]
    out[name] = {"step_ms": float(np.median(t) * 1e3),
                 "images_per_s": config.batch_size / float(np.median(t))}
  return out


def markdown(info, res, args) -> str:
  per_worker = [r for r in res["supply"] if r["workers"] > 0]
  best1 = per_worker[0]["images_per_s"] if per_worker else float("nan")
  lines = ["# Input pipeline: decode supply vs train-step demand (Clothing1M, 224×224 JPEG)",
           "", harness.machine_line(info), harness.load_line(info), "",
           f"Fake Clothing1M pool of {res['pool']} images prepared by the TFDS builder in "
           f"{res['prepare_s']:.1f} s; batches of {args.batch}, {args.steps} timed after the "
           "first. `0` = one background thread in-process (the default); n = n worker "
           "processes, one decode thread each.", ""]
  lines += harness.markdown_table(
      ["data_workers", "images/s", "× in-process", "first batch s"],
      [[r["workers"], f"{r['images_per_s']:.0f}",
        f"{r['images_per_s'] / res['supply'][0]['images_per_s']:.2f}",
        f"{r['first_batch_s']:.2f}"] for r in res["supply"]], "rrrr")
  lines += ["", "Decode of one stored image (ms): " + ", ".join(
      f"{k} {v:.2f}" for k, v in res["decode_ms"].items()) + ".", ""]
  d = res["demand"]
  full = d["resnet18"]
  need = full["images_per_s"] / best1 if best1 == best1 else float("nan")
  lines += harness.markdown_table(
      ["train step (REDUCR, table, B = 320, k = 32, C = 14)", "images/s consumed",
       "decode cores needed (at 1 worker's rate)"],
      [[f"shrunk ResNet (width {args.width}, stages {tuple(args.stages)}), measured here: "
        f"{d['shrunk']['step_ms']:.0f} ms/step", f"{d['shrunk']['images_per_s']:.0f}",
        f"{d['shrunk']['images_per_s'] / best1:.1f}"],
       [f"ResNet-18: {full['flops'] / 1e9:.0f} GFLOP/step (XLA count) at "
        f"{args.accelerator_tflops:.0f} TFLOP/s", f"{full['images_per_s']:.0f}",
        f"{need:.0f}"]], "lrr")
  return "\n".join(lines) + "\n"


def main() -> None:
  p = harness.argument_parser(__doc__)
  p.add_argument("--images", type=int, default=192, help="fake pool size")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--max_workers", type=int, default=0, help="0 = the usable cores")
  p.add_argument("--width", type=int, default=8)
  p.add_argument("--stages", type=harness.int_list, default="1,1")
  p.add_argument("--step_rounds", type=int, default=3)
  p.add_argument("--accelerator_tflops", type=float, default=200.0,
                 help="sustained FLOP rate of the accelerator the full step is priced at")
  harness.add_out_flag(p, "benchmarks/results/pipeline_<backend>.json")
  args = p.parse_args()
  info = harness.machine_info()
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    x, prepare_s = fake_pool(pathlib.Path(tmp), args.images)
    workers = range(0, (args.max_workers or info["cpu_usable"]) + 1)
    res = {"pool": len(x), "prepare_s": prepare_s,
           "supply": [supply(x, args.batch, args.steps, w) for w in workers],
           "decode_ms": decode_one(x)}
  res["demand"] = demand(args)
  harness.finish_info(info, start)
  harness.write_results(args.out, f"pipeline_{info['backend']}",
                        {"info": info, "flags": harness.flag_values(args), **res},
                        markdown(info, res, args))


if __name__ == "__main__":
  main()
