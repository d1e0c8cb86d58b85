"""Table helpers on synthetic numbers: data efficiency (steps to reach uniform's best)."""

import math

import pytest

from reducr_jax.experiments import tables

INF = math.inf
# Worst-class validation curves [(step, value)] of three seeds per method.
CURVES = {
    "uniform": [[(25, 0.5), (50, 0.8), (75, 0.7)],      # best 0.8, first at 50
                [(25, 0.6), (50, 0.6), (75, 0.9)],      # best 0.9 at 75
                [(25, 0.7), (50, 0.75), (75, 0.75)]],   # best 0.75, first at 50
    "fast": [[(25, 0.85), (50, 0.2), (75, 0.2)],        # 25
             [(25, 0.9 - 1e-12), (50, 0.95), (75, 0.9)],  # 25 (equal to rounding)
             [(25, 0.1), (50, 0.2), (75, 0.74)]],       # never (0.74 < 0.75)
    "slow": [[(25, 0.1), (50, 0.2), (75, 0.3)],         # never
             [(25, 0.1), (50, 0.2), (75, 0.3)],         # never
             [(25, 0.1), (50, 0.2), (75, 0.75)]],       # 75
}
SECONDS_PER_STEP = {"uniform": [0.04, 0.04, 0.04], "fast": [0.1, 0.2, 0.3],
                    "slow": [1.0, 1.0, 1.0]}


def test_steps_to_reach_uniforms_best_by_hand():
  table = tables.steps_to_reach_table(CURVES, SECONDS_PER_STEP)
  assert table["uniform"]["target"] == [0.8, 0.9, 0.75]
  # uniform: steps [50, 75, 50] -> median 50; seconds [2, 3, 2] -> 2.
  assert table["uniform"]["steps"] == [50, 75, 50] and table["uniform"]["median_steps"] == 50
  assert table["uniform"]["median_seconds"] == pytest.approx(2.0)
  assert table["uniform"]["reached"] == 3
  # fast: [25, 25, never] -> median 25; seconds [2.5, 5, never] -> 5.
  assert table["fast"]["steps"] == [25, 25, INF] and table["fast"]["median_steps"] == 25
  assert table["fast"]["median_seconds"] == pytest.approx(5.0)
  assert table["fast"]["reached"] == 2
  # slow: [never, never, 75] -> the median seed never reaches it.
  assert table["slow"]["steps"] == [INF, INF, 75] and table["slow"]["median_steps"] == INF
  assert table["slow"]["median_seconds"] == INF and table["slow"]["reached"] == 1
  cells = tables.reach_cells(table)
  steps, seconds = cells.values()
  assert steps == {"uniform": "50 (3/3)", "fast": "25 (2/3)", "slow": "never (1/3)"}
  assert seconds == {"uniform": "2.0", "fast": "5.0", "slow": "never"}


def test_median_with_an_even_number_of_seeds():
  two = {"uniform": [[(10, 0.5)], [(10, 0.5), (20, 0.6)]],
         "a": [[(10, 0.5)], [(30, 0.7)]],           # [10, 30] -> 20
         "b": [[(10, 0.5)], [(30, 0.1)]]}           # [10, never] -> never
  table = tables.steps_to_reach_table(two, {g: [1.0, 1.0] for g in two})
  assert table["uniform"]["median_steps"] == 15          # [10, 20]
  assert table["a"]["median_steps"] == 20 and table["b"]["median_steps"] == INF


def test_val_curve_reads_metrics_records_in_step_order():
  records = [{"step": 50, "val/worst_class_accuracy": 0.6, "val/accuracy": 0.9},
             {"step": 10, "train/loss": 2.0},
             {"step": 25, "val/worst_class_accuracy": 0.4}]
  assert tables.val_curve(records) == [(25, 0.4), (50, 0.6)]
  assert tables.first_step_reaching([(25, 0.4), (50, 0.6)], 0.5) == 50
  assert tables.first_step_reaching([(25, 0.4)], 0.5) == INF


def test_reach_columns_in_the_methods_markdown_and_bad_input():
  table = tables.mean_std_table({g: [{"test": {"worst_class_accuracy": 0.5, "accuracy": 0.9}}]
                                 for g in ("uniform", "fast")})
  cells = {"steps": {"uniform": "50 (1/1)", "fast": "never (0/1)"}}
  md = tables.mean_std_markdown(table, "t", columns=cells)
  assert "| | worst-class test acc. (%) | average test acc. (%) | runs | steps |" in md
  assert "|---|---|---|---|---|" in md and "| 1 | never (0/1) |" in md
  with pytest.raises(ValueError, match="reference 'uniform' must be one of the groups"):
    tables.steps_to_reach_table({"fast": CURVES["fast"]}, SECONDS_PER_STEP)
  with pytest.raises(ValueError, match="fast has 1 seeds, uniform 3"):
    tables.steps_to_reach_table({"uniform": CURVES["uniform"], "fast": CURVES["fast"][:1]},
                                SECONDS_PER_STEP)
