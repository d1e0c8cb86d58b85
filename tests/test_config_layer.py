"""The config layer: one schema, its validation, the built-in configs from any directory,
and the selection rule built once per run."""

import os
import subprocess
import sys

import ml_collections
import pytest

import reducr_jax
from reducr_jax.config import config_files
from reducr_jax.config import config_schema
from reducr_jax.config import config_validation
from reducr_jax.config import configuration
from reducr_jax.train import prune_stage
from reducr_jax import reweighters
from reducr_jax import selectors
from reducr_jax.train import trainer as train
from reducr_jax.train import reference_cache
from reducr_jax.config import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _has(config, name):
  node = config
  for part in name.split("."):
    if not config_validation.is_section(node) or part not in node:
      return False
    node = node[part]
  return True


# ---- the schema ---------------------------------------------------------------------


def test_every_schema_field_is_a_field_of_the_default_config():
  config = reducr_jax.default_config()
  missing = [name for name in config_schema.FIELDS if not _has(config, name)]
  assert not missing
  assert len(config_schema.FIELDS) >= 60
  assert set(map(config_schema.section_of, config_schema.FIELDS)) <= set(config_schema.SECTIONS)


def test_every_classified_field_exists_in_a_built_in_config():
  configs = (reducr_jax.default_config(), reducr_jax.load_config("cifar10"))
  classified = (config_schema.RESUMABLE_FIELDS + config_schema.EXPERTS_EXECUTION_FIELDS +
                config_schema.EXPERTS_STAGE2_FIELDS + config_schema.PRUNING_SCORE_FIELDS +
                tuple(config_schema.ADDED_FIELDS))
  assert not [name for name in classified if not any(_has(c, name) for c in configs)]
  # The fields the experts cache fingerprint leaves out are fields of config.experts.
  assert all(n.startswith("experts.") for n in config_schema.EXPERTS_EXECUTION_FIELDS +
             config_schema.EXPERTS_STAGE2_FIELDS)


def test_the_modules_read_their_field_classes_from_the_schema():
  assert workdir_lib.RESUMABLE_FIELDS is config_schema.RESUMABLE_FIELDS
  assert configuration.ADDED_FIELDS is config_schema.ADDED_FIELDS
  assert reference_cache.EXECUTION_FIELDS == ("cache_dir", "strategy", "chunk", "max_memory_gb")
  assert reference_cache.STAGE2_FIELDS == ("update_on_selected", "update_lr_factor")


def test_cache_fingerprints_are_unchanged():
  """The experts and pruning caches of earlier runs are still found (values of main)."""
  config = reducr_jax.default_config()
  assert reference_cache.fingerprint(config, "experts") == "3dfc9aa451cdec37"
  assert reference_cache.fingerprint(config, "irreducible-half1") == "657f261e7274bf02"
  config.pruning.strategy = "el2n"
  assert prune_stage._scoring_fingerprint(config) == "fda22aec478813cc"
  cifar = reducr_jax.load_config("cifar10")
  assert reference_cache.fingerprint(cifar, "experts") == "5f85bb6ca627517c"
  assert prune_stage._scoring_fingerprint(cifar) == "a8b5e8f289230cd6"


@pytest.mark.parametrize("name, value, message", [
    ("experts.chunk", -1, "config.experts.chunk must be in [0, inf], got -1"),
    ("meta.method", "grad", "config.meta.method must be one of ['jvp', 'nested_grad'], got 'grad'"),
    ("selection.clip", 1, "config.selection.clip must be True or False, got 1"),
    ("pruning.early_epoch", 11, "config.pruning.early_epoch must be in [1, 10], got 11"),
    ("reweight", "focal", "config.reweight must be one of ['none', 'class_balanced', 'meta', "
                          "'group_dro'], got 'focal'"),
    ("data_workers", 1.5, "config.data_workers must be an integer, got 1.5"),
])
def test_schema_driven_errors_name_the_field_and_allowed_values(name, value, message):
  config = ml_collections.ConfigDict(reducr_jax.default_config().to_dict(), type_safe=False)
  section, _, last = name.rpartition(".")
  (config[section] if section else config)[last] = value      # untyped: as JSON gives it
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(config, 8)
  assert str(e.value) == message


def test_an_absent_added_field_reads_as_its_recorded_value():
  config = reducr_jax.default_config()
  del config.selection["mc_passes"]
  del config.experts["double_irreducible"]
  rules = configuration.validate_config(config, 8)
  assert rules.selector.needs == selectors.get(reducr_jax.default_config()).needs
  del config.selection["beta"]
  with pytest.raises(configuration.ConfigError, match=r"^config.selection.beta is missing"):
    configuration.validate_config(config, 8)


# ---- built-in configs ---------------------------------------------------------------


def test_built_in_names_and_repository_paths_load_the_same_config():
  assert {"default", "cifar10", "cifar100", "cinic10", "clothing1m", "mnli",
          "qqp"} <= set(config_files.names())
  by_name = reducr_jax.load_config("cinic10:official")
  by_path = configuration.load_config(os.path.join(REPO, "configs", "cinic10.py") + ":official")
  assert by_name.to_dict() == by_path.to_dict()
  assert by_name.method_overrides.uniform.batch_size == 640
  with pytest.raises(configuration.ConfigError, match=r"^--config file nope does not exist "
                     r"\(built-in configs: cifar10, cifar100,"):
    config_files.load_config("nope")


def _python(code: str, cwd: str) -> str:
  out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_readme_config_loading_works_outside_the_repository(tmp_path):
  out = _python(
      "import sys, reducr_jax\n"
      "from reducr_jax.config import config_files\n"
      "a = reducr_jax.default_config()\n"
      "b = config_files.load_config('configs/default.py')\n"
      "assert a.to_dict() == b.to_dict()\n"
      "print(a.batch_size, 'jax' in sys.modules)\n"
      "c = reducr_jax.load_config('cifar100')\n"
      "print(c.dataset.name, c.selection.eta, 'reducr_jax.config.configuration' in sys.modules,\n"
      "      'reducr_jax.train.trainer' in sys.modules)\n", cwd=str(tmp_path))
  # The default config imports no JAX; a child config loads its parents without the trainer.
  assert out.split() == ["320", "False", "cifar100", "0.0001", "False", "False"]


def test_cli_resolves_a_built_in_config_from_another_directory(tmp_path):
  out = subprocess.run([sys.executable, "-m", "reducr_jax.main", "--config=configs/default.py",
                        f"--workdir={tmp_path / 'w'}", "--config.num_steps=0"],
                       cwd=str(tmp_path), env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == "error: config.num_steps must be in [1, inf], got 0"


# ---- the rules are built once per run -------------------------------------------------


def test_a_run_builds_its_selector_and_reweighter_once(tmp_path, monkeypatch):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  calls = {"selector": 0, "reweighter": 0}
  for name, module in (("selector", selectors.core), ("reweighter", reweighters)):
    build = module._RULES.build

    def counted(rule, config, name=name, build=build):
      calls[name] += 1
      return build(rule, config)
    monkeypatch.setattr(module._RULES, "build", counted)
  config = tiny_config(num_steps=2, eval_every=2, log_every=1, checkpoint_every=2,
                       **{"experts.num_steps": 2, "experts.eval_every": 2})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["method"] == "reducr"
  assert calls == {"selector": 1, "reweighter": 1}
