"""Progress lines of long stages: rate, ETA, throttled, quiet for short stages."""

from reducr_jax.run import progress
from reducr_jax.train import references
from reducr_jax.train import stage1_memory


class Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_reporter_prints_rate_and_eta_at_most_every_interval(capsys, monkeypatch):
  monkeypatch.setattr(progress, "EVERY_SECONDS", 10.0)
  clock = Clock()
  r = progress.Reporter("stage 1: training experts", 100, clock=clock)
  for step in range(1, 101):
    clock.t = step * 0.5                      # 2 steps/s
    r.update(step)
  lines = capsys.readouterr().out.splitlines()
  # 50 s in all: a line at 10, 20, 30, 40 s and the last one at 50 s.
  assert len(lines) == 5
  assert lines[0] == "stage 1: training experts: 20/100 steps  2.0 steps/s, ETA 40s"
  assert lines[-1] == "stage 1: training experts: 100/100 steps  2.0 steps/s, ETA 0s"


def test_short_stage_is_quiet(capsys):
  clock = Clock()
  r = progress.Reporter("evaluation", 3, "batches", clock=clock)
  for i in range(1, 4):
    clock.t = i
    r.update(i)
  assert capsys.readouterr().out == ""


def test_stage_one_and_table_show_progress(tmp_path, capsys, monkeypatch):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  from reducr_jax import data  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)
  config = tiny_config(**{"experts.num_steps": 4, "experts.eval_every": 2})
  splits = data.make_splits(config.dataset, config.seed)
  refs = references.get_reference_models(config, splits, str(tmp_path))
  references.precompute_loss_table(refs, splits.train, 128, config)
  out = capsys.readouterr().out
  assert "stage 1: training experts reference models: 4/4 steps" in out
  assert f"stage 1: reference-loss table: {len(splits.train)}/{len(splits.train)} rows" in out
  assert "ETA" in out
  # Each validation shows its batches, and the training line of a step comes after the
  # step's validation, so the steps' rate (the ETA) includes the validations' time.
  lines = out.splitlines()
  val_line = max(i for i, l in enumerate(lines)
                 if l.startswith("stage 1: step 2 validation on val: "))
  batches = -(-len(splits.val) // config.eval_batch_size)
  assert f": {batches}/{batches} batches" in lines[val_line], lines[val_line]
  step_line = next(i for i, l in enumerate(lines)
                   if l.startswith("stage 1: training experts reference models: 2/4 steps"))
  assert step_line > val_line
  # Printed whatever the log verbosity: the chosen strategy and what each part took.
  line = next(l for l in out.splitlines() if l.startswith("stage 1: 10 experts with "))
  assert config.experts.strategy == "auto" and line.split()[6] == "(auto),", line
  assert "stage 1: trained the experts reference models in " in out
  assert f"stage 1: reference-loss table ({len(splits.train)} rows, batch " in out


def test_strategy_line_and_stage_times(capsys):
  gib = 2**30
  assert stage1_memory.strategy_line("experts", 14, ("map", 0, 2), "auto", 1, 1.234 * gib,
                                     2.94 * gib) == (
      "stage 1: 14 experts with map (auto), 2 microbatches, 1 device, compiled peak "
      "1.23 GiB per device (budget 2.94 GiB)")
  assert "peak 0.00123 GiB" in stage1_memory.strategy_line(
      "experts", 3, ("map", 0, 1), "map", 1, 0.00123 * gib, gib)
  assert stage1_memory.strategy_line("experts", 14, ("vmap", 7, 1), "vmap", 8, None,
                                     gib) == "stage 1: 14 experts with vmap in chunks of 7, 8 devices"
  assert stage1_memory.strategy_line("irreducible", 1, ("map", 0, 1), "auto", 1, None,
                                     gib) == "stage 1: 1 irreducible-loss model with map (auto), 1 device"
  progress.took("stage 2: 2 training steps", 125.4)
  assert capsys.readouterr().out == "stage 2: 2 training steps in 2m05s\n"
