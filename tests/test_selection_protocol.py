"""Validation-only setting selection, paired bootstrap and win rate, --etas parsing."""

import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax.experiments import paired_stats
from reducr_jax.experiments import selection_protocol
from reducr_jax.experiments import sweeps


def _run(val_worst, test_worst):
  return {"val": {"worst_class_accuracy": val_worst},
          "test": {"worst_class_accuracy": test_worst}}


def test_select_setting_reads_validation_only():
  # a: val mean (0.5 + 0.7)/2 = 0.6 with a perfect test; b: val 0.65, bad test → b.
  runs = {"a": [_run(0.5, 1.0), _run(0.7, 1.0)], "b": [_run(0.65, 0.1), _run(0.65, 0.1)]}
  label, scores = selection_protocol.select_setting(runs)
  assert label == "b"
  assert scores == pytest.approx({"a": 0.6, "b": 0.65})


def test_select_setting_tie_goes_to_the_first_given():
  runs = {"0.01": [_run(0.5, 0.0)], "auto": [_run(0.5, 1.0)]}
  assert selection_protocol.select_setting(runs)[0] == "0.01"
  assert selection_protocol.select_setting(dict(reversed(runs.items())))[0] == "auto"


def test_select_per_group():
  out = selection_protocol.select_per_group({
      "reducr": {"0.01": [_run(0.2, 0.9)], "auto": [_run(0.4, 0.1)]},
      "uniform": {"config": [_run(0.3, 0.5)]}})
  assert out == {"reducr": {"selected": "auto",
                            "val_worst_class_accuracy": {"0.01": 0.2, "auto": 0.4}},
                 "uniform": {"selected": "config", "val_worst_class_accuracy": {"config": 0.3}}}


def test_paired_bootstrap_two_pairs_by_hand():
  # Resample means of [0, 1]: 0, ½, 1 with probability ¼, ½, ¼ → 2.5 % / 97.5 % = 0 / 1.
  mean, lo, hi = paired_stats.paired_bootstrap([0.0, 1.0], 10_000, np.random.default_rng(0))
  assert (mean, lo, hi) == (0.5, 0.0, 1.0)


def test_paired_bootstrap_constant_and_normal_cases():
  assert paired_stats.paired_bootstrap([2.0] * 5, 100, np.random.default_rng(0)) == (2.0, 2.0, 2.0)
  # n = 400 draws of N(1, 2²): the interval ≈ mean ± 1.96 · 2 / √400 = mean ± 0.196.
  d = np.random.default_rng(1).normal(1.0, 2.0, 400)
  mean, lo, hi = paired_stats.paired_bootstrap(d, 20_000, np.random.default_rng(2))
  half = 1.96 * d.std() / np.sqrt(d.size)
  assert mean == pytest.approx(d.mean())
  assert lo == pytest.approx(mean - half, abs=0.02) and hi == pytest.approx(mean + half, abs=0.02)


def test_win_rate_counts_ties_half():
  assert paired_stats.win_rate([1.0, -2.0, 0.0, 3.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
  s = paired_stats.paired_summary([1.0, -2.0, 0.0, 3.0], 10, np.random.default_rng(0))
  assert s["median"] == 0.5 and s["mean"] == 0.5 and s["num_pairs"] == 4


@pytest.mark.parametrize("diffs, resamples, message", [
    ([], 10, "diffs must be >= 1 finite numbers"),
    ([1.0, float("nan")], 10, "diffs must be >= 1 finite numbers"),
    ([1.0], 0, "num_resamples must be an int >= 1"),
])
def test_paired_bootstrap_bad_input(diffs, resamples, message):
  with pytest.raises(ValueError, match=message):
    paired_stats.paired_bootstrap(diffs, resamples, np.random.default_rng(0))


def test_parse_etas():
  assert sweeps.parse_etas("3e-3, 1e-2,auto") == {"0.003": 0.003, "0.01": 0.01, "auto": "auto"}
  assert sweeps.parse_etas("") == {}
  for bad in ("0", "-1e-2", "fast", "nan", ",", "1e-2,inf"):
    with pytest.raises(configuration.ConfigError,
                       match=r"--etas must be comma-separated numbers > 0 or 'auto'"):
      sweeps.parse_etas(bad)


def test_compare_grid_sweeps_eta_for_reducr_only_and_selects_on_val():
  import os  # pylint: disable=g-import-not-at-top
  from reducr_jax.experiments import compare  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configuration.load_config(os.path.join(repo, "configs/default.py"))
  runs = compare.grid(config, ["uniform", "reducr"], [0, 1], sweeps.parse_etas("1e-2,auto"))
  assert {l: [r.name for r in rs] for l, rs in runs["uniform"].items()} == {
      "config": ["uniform/seed0", "uniform/seed1"]}
  assert [r.name for r in runs["reducr"]["auto"]] == ["reducr/etaauto/seed0", "reducr/etaauto/seed1"]
  assert runs["reducr"]["auto"][1].config.selection.eta == "auto"
  assert runs["reducr"]["0.01"][0].config.selection.eta == 0.01
  assert runs["uniform"]["config"][0].config.selection.eta == config.selection.eta
  # Val worst: η 0.01 → mean 0.7, auto → 0.6; test says the opposite and is not read.
  val = {"uniform/seed0": 0.5, "uniform/seed1": 0.5, "reducr/eta0.01/seed0": 0.6,
         "reducr/eta0.01/seed1": 0.8, "reducr/etaauto/seed0": 0.6, "reducr/etaauto/seed1": 0.6}
  results = {name: _run(v, 1.0 - v) for name, v in val.items()}
  selected, selection = compare.select(runs, results)
  assert [r.name for r in selected["reducr"]] == ["reducr/eta0.01/seed0", "reducr/eta0.01/seed1"]
  assert selection["reducr"]["val_worst_class_accuracy"] == pytest.approx({"0.01": 0.7, "auto": 0.6})
  assert selection["uniform"]["selected"] == "config"
