"""Runs a grid of trainer configs: resumable, skipping finished runs, in parallel processes.

A grid is a list of :class:`Run` (a name, used as the run's sub-directory, and a full
config). :func:`run_grid`:

  1. trains the reference models each run needs once per distinct (seed, data, model,
     expert) fingerprint, into one shared cache (``<workdir>/experts``), so methods that
     share experts never train them twice and parallel runs never race on them;
  2. runs every run whose ``results.json`` does not exist yet — an interrupted sweep
     resumes each unfinished run from its last checkpoint and skips the finished ones;
  3. returns every run's results dict.

Parallelism: ``workers > 1`` runs that many processes (``spawn``; JAX does not survive
``fork``). Measured on 2 CPU cores (default config, 3 methods × 2 seeds, reference models
included): 57.6 s with 1 process, 50.1 s with 2 — processes help only 1.15×, because one
XLA process already spreads its kernels over both cores; more workers than cores would
only add contention. A ``vmap`` over seeds is not offered: seeds differ in their data
splits, so their batches are not one stacked array (and the gain would be bounded by the
same two cores).

Compilation cache: most of a short run's time is XLA compilation of the same programs
(every seed and most methods of a grid compile identical train, evaluation and expert
steps). :func:`run_grid` turns on JAX's persistent compilation cache in
``<workdir>/compile_cache`` in every worker process (and restores the settings after an
in-process grid), so each distinct program is compiled once per sweep. A cache hit loads
the executable XLA wrote for the same program, so results are unchanged (tested:
``tests/test_experiments.py``). Without a size limit JAX writes entries without a file
lock, so a worker may read an entry another worker is still writing; the truncated,
compressed entry then fails to load, JAX warns and compiles the program itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import sys
from typing import Any, Callable, Optional, Sequence


RESULTS = "results.json"
COMPILE_CACHE = "compile_cache"
CACHE_SETTINGS = {                   # entries of any size and compile time are kept
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One trainer run of a grid: ``<workdir>/runs/<name>/`` with this config."""
  name: str
  config: Any


def run_dir(workdir: str, run: Run) -> str:
  return os.path.join(workdir, "runs", run.name)


def load_results(workdir: str, run: Run) -> Optional[dict]:
  path = os.path.join(run_dir(workdir, run), RESULTS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _with_shared_cache(config: Any, workdir: str):
  from reducr_jax.config import configuration  # pylint: disable=g-import-not-at-top
  return configuration.with_overrides(
      config, {"experts.cache_dir": os.path.join(workdir, "experts")})


@contextlib.contextmanager
def compile_cache(directory: Optional[str]):
  """JAX's persistent compilation cache in ``directory`` for the block (``None``: off).

  Sets ``jax_compilation_cache_dir`` (plus :data:`CACHE_SETTINGS`) and resets JAX's
  cache object so the directory takes effect even after earlier compilations in this
  process; restores the previous settings on exit.
  """
  if not directory:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  settings = {"jax_compilation_cache_dir": directory, **CACHE_SETTINGS}
  before = {k: getattr(jax.config, k) for k in settings}
  os.makedirs(directory, exist_ok=True)
  for k, v in settings.items():
    jax.config.update(k, v)
  cc.reset_cache()
  try:
    yield
  finally:
    for k, v in before.items():
      jax.config.update(k, v)
    cc.reset_cache()


def _pretrain(config: Any, cache: Optional[str] = None) -> str:
  """Worker: trains (or finds cached) the reference models of one config."""
  from reducr_jax import data  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import double_reference, references  # pylint: disable=g-import-not-at-top
  with compile_cache(cache), contextlib.redirect_stdout(io.StringIO()):
    splits = data.make_splits(config.dataset, config.seed)
    if config.experts.get("double_irreducible", False):    # the two half models
      double_reference.references(config, splits, config.experts.cache_dir)
    else:
      references.get_reference_models(config, splits, config.experts.cache_dir)
  return references.reference_kind_for_config(config) or ""


def _train(config: Any, directory: str,
           cache: Optional[str] = None) -> dict:
  """Worker: one full trainer run, its output to ``<directory>/log.txt``."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import trainer as train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  os.makedirs(directory, exist_ok=True)
  with compile_cache(cache), open(os.path.join(directory, "log.txt"), "a") as log, \
      contextlib.redirect_stdout(log):
    return train.train_and_evaluate(config, directory)


def _progress(total: int, desc: str):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True)
  except ImportError:  # pragma: no cover - tqdm is a dependency
    return None


def _map(fn: Callable, args: Sequence[tuple], workers: int, desc: str) -> list:
  """Applies ``fn`` to each argument tuple, in ``workers`` processes, with a progress bar."""
  out = [None] * len(args)
  if not args:
    return out
  bar = _progress(len(args), desc)
  if workers <= 1:
    for i, a in enumerate(args):
      out[i] = fn(*a)
      if bar:
        bar.update()
  else:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
      for fut in concurrent.futures.as_completed(futures):
        out[futures[fut]] = fut.result()
        if bar:
          bar.update()
  if bar:
    bar.close()
  return out


def run_grid(runs: Sequence[Run], workdir: str, workers: int = 1,
             cache_compilation: bool = True) -> dict[str, dict]:
  """Runs every unfinished run of the grid; returns ``{run name: results dict}``.

  Args:
    runs: the grid; names must be unique.
    workdir: the sweep's directory (absolute or relative).
    workers: processes to run in parallel (1: in this process).
    cache_compilation: JAX's persistent compilation cache in ``<workdir>/compile_cache``
      (not for a ``gs://`` workdir).
  """
  from reducr_jax.config import configuration  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import reference_cache, references  # pylint: disable=g-import-not-at-top
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise configuration.ConfigError(f"run names must be unique, got {names}")
  workdir = configuration.check_workdir(workdir)
  for r in runs:                                     # every config checked before any work
    configuration.validate_config(r.config)
  todo = [r for r in runs if load_results(workdir, r) is None]
  configs = [_with_shared_cache(r.config, workdir) for r in todo]
  refs, seen = [], set()
  for c in configs:
    kind = references.reference_kind_for_config(c)
    key = kind and reference_cache.cache_path(c, c.experts.cache_dir, kind)
    if kind and key not in seen and not os.path.exists(key):
      seen.add(key)
      refs.append((c,))
  cache = (os.path.join(workdir, COMPILE_CACHE)
           if cache_compilation and "://" not in workdir else None)
  _map(_pretrain, [(c, cache) for c, in refs], workers, "reference models")
  _map(_train, [(c, run_dir(workdir, r), cache) for c, r in zip(configs, todo)], workers,
       "runs")
  return {r.name: load_results(workdir, r) for r in runs}
