"""Test setup: 8 fake CPU devices (pmap / sharding tests), set before jax is imported, and
one persistent JAX compilation cache per test run.

The cache: every test process of a run (both pytest-xdist workers, and the trainer
subprocesses tests start, through the environment) shares
``<pytest's base temp>/jax_compile_cache``, so the many tiny programs the tests share
compile once per run instead of once per test (``tests/test_train.py`` on 2 cores: 4 min
48 s without, 3 min 21 s with a cold cache). Results are bit-identical with and without it
(``test_experiments.test_compile_cache_keeps_results_identical``). Tests that count
backend compiles opt out with the ``no_compile_cache`` fixture. pytest deletes old base
temps (the last three are kept), so the cache never grows across runs.
"""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _set_cache_dir(directory):
  """JAX's persistent cache directory in this process (``None``: off), from now on."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", directory)
  cc.reset_cache()        # takes effect even after earlier compilations


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
  """The run's compilation cache, for this process and the subprocesses tests start."""
  if os.environ.get("REDUCR_TEST_COMPILE_CACHE", "1") == "0":   # off: measure without
    yield None
    return
  from reducr_jax.experiments import runner  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):   # .../pytest-N/popen-gwK: share pytest-N
    base = base.parent
  directory = str(base / "jax_compile_cache")
  for name, value in {"jax_compilation_cache_dir": directory, **runner.CACHE_SETTINGS}.items():
    os.environ[name.upper()] = str(value)     # the trainer subprocesses tests start
  with runner.compile_cache(directory):       # this process (the experiments' own helper)
    yield directory


@pytest.fixture
def no_compile_cache():
  """No persistent cache inside the test (it counts backend compiles: a cache hit is none)."""
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_compilation_cache_dir
  _set_cache_dir(None)
  try:
    yield
  finally:
    _set_cache_dir(before)
