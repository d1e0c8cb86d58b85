"""The input pipeline: worker processes build the same batches as the in-process loop."""

import io

import ml_collections
import numpy as np
from PIL import Image
import pytest

from reducr_jax import data
from reducr_jax.data import pipeline
from reducr_jax.data import random_access


def _jpeg_rows(n=40):
  """A lazy array of n 16×16 JPEGs decoded with PIL by the shared decode pool."""
  rng = np.random.default_rng(0)
  records = []
  for _ in range(n):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    records.append(buf.getvalue())
  decode = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
  return random_access.LazyArray([random_access.DataSourceRows(records, decode, (16, 16, 3),
                                                               np.uint8)])


def test_workers_build_the_same_batches_as_one_thread():
  x = _jpeg_rows()

  def make(step):                       # a pure function of (seed, step)
    idx = data.batch_indices(3, step, len(x), 24)
    return {"x": x[idx], "idx": idx}

  def run(workers, start, stop):
    config = ml_collections.ConfigDict({"data_workers": workers, "prefetch": 1})
    return list(pipeline.batches(config, make, start, stop, put=lambda b: {**b, "put": 1}))

  single = run(0, 2, 7)
  for workers in (1, 3):
    got = run(workers, 2, 7)
    assert len(got) == 5
    for a, b in zip(got, single):
      assert a["put"] == 1
      np.testing.assert_array_equal(a["x"], b["x"])
      np.testing.assert_array_equal(a["idx"], b["idx"])
  # Resuming at step 4 gives steps 4.. exactly; abandoning the iterator stops the workers.
  resumed = run(2, 4, 7)
  np.testing.assert_array_equal(resumed[0]["x"], single[2]["x"])
  it = pipeline.batches(ml_collections.ConfigDict({"data_workers": 2, "prefetch": 2}), make,
                        0, 100)
  next(it)
  it.close()


@pytest.mark.parametrize("requested, cores, available, expected, why", [
    (4, 16, 64 * 2**30, 4, ""),                                   # asked for little: as asked
    (64, 16, 64 * 2**30, 16, "16 usable CPU cores"),
    # 2 GiB free: half of it fits ⌊1 GiB / (200 MiB + 100 MiB)⌋ = 3 workers.
    (64, 16, 2 * 2**30, 3, "half of the 2.0 GiB available at 0.29 GiB per worker"),
    (8, 16, 2**20, 1, "half of the 0.0 GiB available"),            # always at least one
    (64, 16, None, 16, "16 usable CPU cores"),                     # memory unknown
])
def test_worker_count_is_bounded_by_cores_and_memory(requested, cores, available, expected,
                                                      why):
  n, reason = pipeline.worker_count(requested, 100 * 2**20, cores, available)
  assert n == expected and why in reason and (reason == "") == (why == "")


def _make(step):
  return {"step": np.int64(step)}


def test_too_many_workers_say_what_was_started(caplog, monkeypatch):
  """data_workers=64 on a 2-core machine: 2 workers and one warning line saying so (it
  used to spawn 63 and print nothing for minutes); the batches are the same."""
  import logging  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pipeline, "_usable_cores", lambda: 2)
  monkeypatch.setattr(pipeline, "_available_bytes", lambda: None)
  config = ml_collections.ConfigDict({"data_workers": 64, "prefetch": 1})
  with caplog.at_level(logging.WARNING):
    got = list(pipeline.batches(config, _make, 0, 3))
  lines = [r.getMessage() for r in caplog.records if "data_workers" in r.getMessage()]
  assert lines == ["config.data_workers=64: starting 2 worker processes (bounded by 2 "
                   "usable CPU cores)"]
  assert [int(b["step"]) for b in got] == [0, 1, 2]
