"""Experiment commands on tiny settings: tables and figures hold the numbers the runs wrote."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/default.py", "--config.dataset.imbalance_fraction=0.05",
        "--config.model.hidden=(16,)", "--config.batch_size=40", "--config.num_steps=20",
        "--config.experts.num_steps=20", "--config.experts.eval_every=20",
        "--config.eval_every=10", "--config.log_every=10", "--config.checkpoint_every=10",
        "--config.num_devices=1"]


def _run(module, workdir, *flags):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", f"reducr_jax.experiments.{module}", *TINY,
                         f"--workdir={workdir}", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True)


def _results(workdir, name):
  with open(os.path.join(workdir, "runs", name, "results.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_compare_table_figures_and_resume(tmp_path):
  out = _run("compare", tmp_path, "--methods=uniform,reducr", "--seeds=2", "--workers=2")
  assert out.returncode == 0, out.stderr
  table = json.loads((tmp_path / "table.json").read_text())
  assert set(table) == {"uniform", "reducr"}
  for method in table:
    worst = [100 * _results(tmp_path, f"{method}/seed{s}")["test"]["worst_class_accuracy"]
             for s in range(2)]
    assert table[method]["worst_class_accuracy"]["values"] == pytest.approx(worst)
    assert table[method]["worst_class_accuracy"]["mean"] == pytest.approx(np.mean(worst))
    assert table[method]["worst_class_accuracy"]["std"] == pytest.approx(np.std(worst))
  md = (tmp_path / "table.md").read_text()
  assert f"{table['reducr']['accuracy']['mean']:.2f} ± {table['reducr']['accuracy']['std']:.2f}" in md
  # Data efficiency: first evaluated step at or above uniform's best worst-class val
  # accuracy of the same seed, from each run's metrics.jsonl; seconds from timing.json.
  for method in table:
    reach = table[method]["data_efficiency"]
    for s in range(2):
      val = {m: [(r["step"], r["val/worst_class_accuracy"]) for r in map(json.loads, (
          tmp_path / f"runs/{m}/seed{s}/metrics.jsonl").read_text().splitlines())
                 if "val/worst_class_accuracy" in r] for m in ("uniform", method)}
      target = max(v for _, v in val["uniform"])
      first = next((step for step, v in val[method] if v >= target), None)
      assert reach["target"][s] == target
      assert reach["steps"][s] == (first if first is not None else None)  # JSON: inf -> null
      timing = json.loads((tmp_path / f"runs/{method}/seed{s}/timing.json").read_text())
      if first is not None:
        assert reach["seconds"][s] == pytest.approx(
            first * timing["train_seconds"] / timing["steps_run"])
  assert table["uniform"]["data_efficiency"]["reached"] == 2
  assert "steps to uniform's best worst-class val. acc." in md and "every 10 steps" in md
  figs = tmp_path / "figures"
  for name in ("class_weights", "worst_class_val", "per_class_test", "selected_fraction",
               "selected_corrupted"):
    assert (figs / f"{name}.png").stat().st_size > 10_000
  weights = json.loads((figs / "class_weights.json").read_text())
  log = [json.loads(l) for l in (tmp_path / "runs/reducr/seed0/metrics.jsonl").read_text().splitlines()]
  logged = [r["train/class_weights"] for r in log if "train/class_weights" in r]
  np.testing.assert_allclose(weights["class_weights"], logged)
  # Experts trained once per seed, shared by the methods; a re-run trains nothing.
  assert len(os.listdir(tmp_path / "experts")) == 2
  before = {p: os.path.getmtime(tmp_path / "runs/reducr/seed0" / p) for p in ("results.json",)}
  again = _run("compare", tmp_path, "--methods=uniform,reducr", "--seeds=2", "--workers=1")
  assert again.returncode == 0, again.stderr
  assert os.path.getmtime(tmp_path / "runs/reducr/seed0/results.json") == before["results.json"]


@pytest.mark.slow
def test_ablate(tmp_path):
  out = _run("ablate", tmp_path / "ablate", "--seeds=1", "--workers=1")
  assert out.returncode == 0, out.stderr
  table = json.loads((tmp_path / "ablate/ablation.json").read_text())
  assert list(table) == ["REDUCR", "no clip", "no class-holdout term", "no expert term",
                         "no model-loss term (clipped, official)",
                         "no model-loss term (unclipped)"]
  r = _results(tmp_path / "ablate", "no_model_loss_term_unclipped/seed0")
  assert r["config"]["selection"]["use_model_loss"] is False and not r["config"]["selection"]["clip"]
  assert table["no model-loss term (unclipped)"]["accuracy"]["values"] == [
      pytest.approx(100 * r["test"]["accuracy"])]
  r = _results(tmp_path / "ablate", "no_model_loss_term_clipped_official/seed0")
  assert r["config"]["selection"]["use_model_loss"] is False and r["config"]["selection"]["clip"]
  assert (tmp_path / "ablate/figures/class_weights_no_class_holdout_term.png").exists()


@pytest.mark.slow
def test_imbalance(tmp_path):
  out = _run("imbalance", tmp_path / "imb", "--seeds=1", "--workers=1",
             "--methods=uniform,reducr", "--fractions=0.02,0.1", "--imbalance_class=2")
  assert out.returncode == 0, out.stderr
  table = json.loads((tmp_path / "imb/imbalance.json").read_text())
  r = _results(tmp_path / "imb", "reducr/frac0.02/seed0")
  assert r["config"]["dataset"]["imbalance_class"] == 2
  assert table["reducr"]["0.02"]["median"] == pytest.approx(100 * r["test"]["worst_class_accuracy"])
  assert (tmp_path / "imb/figures/imbalance_sweep.png").stat().st_size > 10_000


@pytest.mark.slow
def test_robustness_every_rare_class_paired_stats_and_eta_chosen_on_val(tmp_path):
  out = _run("robustness", tmp_path, "--datasets=digits,mnist1d", "--mnist1d_samples=1000",
             "--rare_classes=2", "--seeds=2", "--methods=uniform,reducr",
             "--etas=0.01,auto", "--workers=1", "--num_resamples=200")
  assert out.returncode == 0, out.stderr
  table = json.loads((tmp_path / "robustness.json").read_text())
  for dataset in ("digits", "mnist1d"):
    # η chosen per dataset on mean worst-class *validation* accuracy over protocols × seeds.
    val = {label: np.mean([_results(tmp_path, f"{dataset}/rare2/reducr/eta{label}/seed{s}")
                           ["val"]["worst_class_accuracy"] for s in range(2)])
           for label in ("0.01", "auto")}
    chosen = "0.01" if val["0.01"] >= val["auto"] else "auto"
    assert table["selection"][dataset]["reducr"]["selected"] == chosen
    assert table["selection"][dataset]["reducr"]["val_worst_class_accuracy"] == pytest.approx(val)
    r = _results(tmp_path, f"{dataset}/rare2/reducr/etaauto/seed0")
    assert r["config"]["dataset"]["imbalance_class"] == 2 and r["config"]["dataset"]["name"] == dataset
    assert r["config"]["selection"]["eta"] == "auto" and r["eta"]["eta_1"] > 0
    diffs = [100 * (_results(tmp_path, f"{dataset}/rare2/reducr/eta{chosen}/seed{s}")
                    ["test"]["worst_class_accuracy"] -
                    _results(tmp_path, f"{dataset}/rare2/uniform/seed{s}")
                    ["test"]["worst_class_accuracy"]) for s in range(2)]
    for stats in (table["per_protocol"][dataset]["2"]["uniform"],
                  table["pooled"][dataset]["uniform"]):   # one protocol: pooled = it
      assert stats["mean"] == pytest.approx(np.mean(diffs))
      assert stats["median"] == pytest.approx(np.median(diffs))
      assert stats["lo"] <= stats["mean"] <= stats["hi"] and stats["num_pairs"] == 2
      assert stats["win_rate"] == pytest.approx(np.mean([(d > 0) + 0.5 * (d == 0) for d in diffs]))
  assert _results(tmp_path, "mnist1d/rare2/uniform/seed0")["config"]["dataset"]["num_samples"] == 1000
  assert "| **pooled** |" in (tmp_path / "robustness.md").read_text()
  assert (tmp_path / "figures/robustness_gain.png").stat().st_size > 10_000
  assert os.listdir(tmp_path / "compile_cache")


@pytest.mark.slow
def test_compile_cache_keeps_results_identical(tmp_path):
  from reducr_jax.config import configuration
  from reducr_jax.experiments import runner
  config = configuration.with_overrides(
      configuration.load_config(os.path.join(REPO, "configs/default.py")),
      {"dataset.imbalance_fraction": 0.05, "model.hidden": (16,), "batch_size": 80,
       "num_steps": 10, "experts.num_steps": 10, "experts.eval_every": 10, "eval_every": 10,
       "log_every": 10, "checkpoint_every": 10, "num_devices": 1})
  import jax
  cache_before = jax.config.jax_compilation_cache_dir   # the test run's own (conftest)
  off = runner.run_grid([runner.Run("a", config)], str(tmp_path / "off"), 1,
                        cache_compilation=False)["a"]
  assert not (tmp_path / "off/compile_cache").exists()
  cold = runner.run_grid([runner.Run("a", config)], str(tmp_path / "on"), 1)["a"]
  written = set(os.listdir(tmp_path / "on/compile_cache"))
  assert written
  warm = runner.run_grid([runner.Run("b", config)], str(tmp_path / "on"), 1)["b"]
  assert set(os.listdir(tmp_path / "on/compile_cache")) == written   # every program a hit
  for r in (cold, warm):
    for split in ("val", "test"):
      assert r[split]["per_class_accuracy"] == off[split]["per_class_accuracy"]
    assert r["class_weights"] == off["class_weights"] and r["best_step"] == off["best_step"]
  assert jax.config.jax_compilation_cache_dir == cache_before   # the grid restored JAX's


@pytest.mark.parametrize("module, flags, message", [
    ("compare", ["--methods=uniform,greedy"], "--methods must be a comma-separated subset of"),
    ("compare", ["--seeds=0"], "--seeds must be >= 1, got 0"),
    ("imbalance", ["--fractions=0.01,1.5"], "--fractions must be comma-separated numbers in (0, 1]"),
    ("ablate", ["--config.selection.etaa=1"], "--config.selection.etaa: no such config field"),
    ("compare", ["--etas=1e-2,0"], "--etas must be comma-separated numbers > 0 or 'auto'"),
    ("robustness", ["--datasets=digits,cifar"], "--datasets must be distinct names from"),
    ("robustness", ["--rare_classes=10"], "--rare_classes must be 'all' or distinct class indices in [0, 10)"),
    ("robustness", ["--methods=uniform,rho_loss"], "--methods must include reducr and at least one baseline"),
])
def test_bad_input_before_any_run(tmp_path, module, flags, message):
  out = _run(module, tmp_path / "w", *flags)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [f"error: {out.stderr.strip().splitlines()[0][7:]}"]
  assert message in out.stderr
  assert not (tmp_path / "w" / "runs").exists()


@pytest.mark.slow
def test_reweight_binary(tmp_path):
  out = _run("reweight_binary", tmp_path, "--seeds=1", "--workers=1", "--classes=4,9",
             "--minority_fraction=0.05", "--val_per_class=5")
  assert out.returncode == 0, out.stderr
  table = json.loads((tmp_path / "reweight_binary.json").read_text())
  assert list(table) == ["none", "class_balanced", "meta"]
  r = _results(tmp_path, "meta/seed0")
  assert r["reweight"] == "meta" and r["class_names"] == ["4", "9"]
  assert r["config"]["dataset"]["holdout_per_class"] == 5
  assert table["meta"]["accuracy"]["values"] == [pytest.approx(100 * r["test"]["accuracy"])]
  bad = _run("reweight_binary", tmp_path / "bad", "--classes=4")
  assert bad.returncode == 2 and "--classes must be two class indices" in bad.stderr


@pytest.mark.slow
def test_prune_pipeline(tmp_path):
  out = _run("prune", tmp_path, "--seeds=1", "--workers=1", "--densities=0.5,1.0",
             "--strategies=random,el2n,drop", "--config.pruning.score_epochs=3",
             "--config.pruning.early_epoch=1", "--config.pruning.dyn_unc_window=2",
             "--config.pruning.num_inits=2")
  assert out.returncode == 0, out.stderr
  table = json.loads((tmp_path / "pruning.json").read_text())
  assert set(table) == {"random", "el2n", "drop"}
  full = _results(tmp_path, "random/density1.0/seed0")["pruning"]["kept"]
  for strategy in table:
    r = _results(tmp_path, f"{strategy}/density0.5/seed0")
    assert r["pruning"]["strategy"] == strategy
    assert r["pruning"]["kept"] == int(np.floor(0.5 * full + 0.5))
    assert sum(r["pruning"]["kept_per_class"]) == r["pruning"]["kept"]
    cell = table[strategy]["0.5"]
    assert cell["worst_class_accuracy"]["mean"] == pytest.approx(100 * r["test"]["worst_class_accuracy"])
    assert cell["accuracy_gap"]["mean"] == pytest.approx(100 * r["test"]["accuracy_gap"])
  drop = _results(tmp_path, "drop/density0.5/seed0")["pruning"]
  assert len(drop["query_recalls"]) == 10
  # One scoring run per seed, shared by el2n and drop.
  assert len(os.listdir(tmp_path / "pruning")) == 1
  assert (tmp_path / "figures/pruning_worst_class.png").stat().st_size > 10_000
