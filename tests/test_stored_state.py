"""Nothing lost, nothing wrong used: a checkpoint of another config is refused, never
deleted; an unverified checkpoint is checked and the last verified step is never rotated
away; an experts cache of another config is rebuilt (issue 25, items 1-3)."""

import json
import logging
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from reducr_jax.run import checkpointing
from reducr_jax.config import configuration
from reducr_jax.train import reference_cache
from reducr_jax.train import references
from reducr_jax.train import trainer as train
from reducr_jax.config import workdir as workdir_lib
import test_resilience

tiny_config = test_resilience.tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("record", ["deleted", "hand_edited"])
def test_a_resume_with_another_config_is_refused_and_deletes_nothing(tmp_path, record):
  """config.json deleted (or edited to the new config): the checkpoints and results.json
  still say which config wrote them; the run is refused in one line (exit 2) before
  anything trains, and every checkpoint is kept."""
  config = tiny_config(**{"selection.method": "uniform", "num_steps": 10,
                          "checkpoint_every": 5})
  train.train_and_evaluate(config, str(tmp_path))
  results = (tmp_path / "results.json").read_bytes()
  other = configuration.with_overrides(config, {"selection.method": "rho_loss"})
  if record == "deleted":
    (tmp_path / "config.json").unlink()
  else:
    (tmp_path / "config.json").write_text(other.to_json_best_effort())
  with pytest.raises(configuration.ConfigError) as e:
    train.train_and_evaluate(other, str(tmp_path))
  assert "selection.method ('uniform' -> 'rho_loss')" in str(e.value)
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "5"]
  assert (tmp_path / "results.json").read_bytes() == results


def test_a_checkpoint_of_another_state_is_a_mismatch_and_is_kept(tmp_path, caplog):
  """No config recorded at all (an older checkpoint): a template that does not match the
  stored tree is a config mismatch (exit 2), not damage; nothing is deleted."""
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"a": np.arange(300.0)})
    ckpt.save(2, {"a": np.arange(300.0) + 1})
  for template in ({"a": np.arange(30.0)}, {"a": np.arange(300.0), "b": np.zeros(3)}):
    with checkpointing.Checkpointer(tmp_path) as ckpt:
      with pytest.raises(checkpointing.CheckpointMismatch) as e:
        ckpt.restore_newest_intact(template)
    assert isinstance(e.value, configuration.ConfigError) and "\n" not in str(e.value)
    assert f"checkpoint {tmp_path / '2'} " in str(e.value) and "kept" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
  assert "damaged" not in caplog.text


def test_a_matching_state_with_typed_keys_is_no_mismatch(tmp_path):
  state = {"k": jax.random.key(0), "keys": jax.random.split(jax.random.key(1), 4),
           "raw": jax.random.PRNGKey(2), "a": np.zeros(3), "n": 7}
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    step, restored = ckpt.restore_newest_intact(state)
  assert step == 1 and restored["n"] == 7
  assert np.array_equal(jax.random.key_data(restored["keys"]),
                        jax.random.key_data(state["keys"]))


def test_checkpoints_record_their_config(tmp_path):
  config = tiny_config(**{"selection.method": "uniform", "num_steps": 10,
                          "checkpoint_every": 5})
  recorded = json.loads(config.to_json_best_effort())
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, {"a": np.zeros(2)}, recorded)
  assert checkpointing.stored_config(tmp_path / "5") == recorded
  assert checkpointing.stored_config(tmp_path / "6") is None
  (tmp_path / "checkpoints").mkdir()
  os.rename(tmp_path / "5", tmp_path / "checkpoints" / "5")
  other = configuration.with_overrides(config, {"optimizer.learning_rate": 0.5})
  with pytest.raises(configuration.ConfigError, match=r"optimizer.learning_rate \(.* -> 0.5\)"):
    workdir_lib.check_config(tmp_path, other)             # no config.json at all
  workdir_lib.check_config(tmp_path, configuration.with_overrides(config, {"num_steps": 20}))


def test_an_unverified_step_with_non_finite_values_falls_back(tmp_path, caplog):
  """A step without a manifest that loads NaN where the template is finite is damaged."""
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"a": np.arange(300.0), "best": np.float32(-np.inf)})
    ckpt.save(2, {"a": np.full(300, np.nan), "best": np.float32(1.0)})
  os.remove(tmp_path / "2" / checkpointing.MANIFEST)      # its writer died before it
  with checkpointing.Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING):
    step, restored = ckpt.restore_newest_intact({"a": np.zeros(300),
                                                    "best": np.float32(-np.inf)})
  assert step == 1 and np.array_equal(restored["a"], np.arange(300.0))
  assert restored["best"] == -np.inf          # non-finite where the template is: allowed
  assert f"checkpoint {tmp_path / '2'} is damaged (non-finite values in ['a'])" in caplog.text


def test_rotation_never_deletes_the_newest_verified_step(tmp_path, monkeypatch):
  """Two saves killed between orbax's rename and the manifest: the last verified step
  stays until a newer verified one exists."""
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  ckpt.save(1, {"a": np.zeros(2)})
  ckpt.wait()
  real = checkpointing.Checkpointer._write_manifest  # pylint: disable=protected-access

  def killed(self, step):
    raise KeyboardInterrupt
  monkeypatch.setattr(checkpointing.Checkpointer, "_write_manifest", killed)
  for step in (2, 3):
    ckpt.save(step, {"a": np.full(2, step)})
    with pytest.raises(KeyboardInterrupt):              # raised by the finisher thread
      ckpt.wait()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]
  monkeypatch.setattr(checkpointing.Checkpointer, "_write_manifest", real)
  ckpt.save(4, {"a": np.full(2, 4.0)})
  ckpt.save(5, {"a": np.full(2, 5.0)})
  assert ckpt.all_steps() == [4, 5] and sorted(os.listdir(tmp_path)) == ["4", "5"]
  ckpt.close()


def _expert_cache_config(**overrides):
  return tiny_config(**{"selection.method": "rho_loss", "experts.num_steps": 4,
                        "experts.eval_every": 4, **overrides})


@pytest.mark.slow
def test_an_experts_cache_of_another_config_is_rebuilt(tmp_path, caplog):
  """The fingerprint is stored inside the cache: a file written for another config and
  copied under this config's name (same shapes, or other shapes) is reported and rebuilt."""
  from reducr_jax import data  # pylint: disable=g-import-not-at-top
  config = _expert_cache_config()
  splits = data.make_splits(config.dataset, config.seed)
  mine = references.get_reference_models(config, splits, str(tmp_path))
  path = pathlib.Path(reference_cache.cache_path(config, str(tmp_path), "irreducible"))
  other = reference_cache.fingerprint(
      _expert_cache_config(**{"experts.learning_rate": 0.5}), "irreducible")
  payload = checkpointing.read_cache(path, path.name.split("-")[1])
  same_shapes = jax.tree.map(lambda a: a + 1.0, payload)
  other_shapes = jax.tree.map(lambda a: np.concatenate([a, a], -1), payload)
  for theirs in (same_shapes, other_shapes):
    shutil.rmtree(path)
    checkpointing.write_cache(path, theirs, other)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      again = references.get_reference_models(config, splits, str(tmp_path))
    assert (f"cache {path} is damaged (written for another config: fingerprint {other}, "
            f"this config's {path.name.split('-')[1]})") in caplog.text
    for a, b in zip(*map(_leaves, (again.params, mine.params))):
      np.testing.assert_array_equal(a, b)                    # retrained: this config's own
  assert checkpointing.read_cache(path, path.name.split("-")[1]) is not None  # rebuilt, intact


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
