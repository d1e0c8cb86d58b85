"""The input pipeline: worker processes build the same batches as the in-process loop."""

import io

import ml_collections
import numpy as np
from PIL import Image

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
