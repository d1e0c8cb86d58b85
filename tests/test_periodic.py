"""periodic.every: the one "every n steps and at the last" rule of both training loops."""

import pytest

from reducr_jax.train import periodic


def test_every_runs_at_multiples_and_at_the_last_step():
  # 10 steps, every 4: steps 4, 8 and the last (10); never 0 < step < 4.
  assert [s for s in range(1, 11) if periodic.every(s, 4, 10)] == [4, 8, 10]
  # Without a last step: multiples only, including 0 (the holdout refresh before step 0).
  assert [s for s in range(0, 10) if periodic.every(s, 3)] == [0, 3, 6, 9]
  # A period longer than the run: only the last step.
  assert [s for s in range(1, 6) if periodic.every(s, 100, 5)] == [5]


def test_every_rejects_a_period_below_one():
  with pytest.raises(ValueError, match=r"n \(the period\) must be >= 1, got 0"):
    periodic.every(3, 0, 10)
