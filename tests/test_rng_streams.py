"""Named rng streams: one split of the run key, NumPy orders seeded by (seed, stream)."""

import jax
import numpy as np
import pytest

from reducr_jax import data
from reducr_jax.core import rng_streams


def test_key_is_the_named_row_of_one_split_of_the_run_key():
  rows = np.asarray(jax.random.split(jax.random.PRNGKey(7), len(rng_streams.NAMES)))
  for i, name in enumerate(rng_streams.NAMES):
    np.testing.assert_array_equal(np.asarray(rng_streams.key(7, name)), rows[i])
  keys = {tuple(np.asarray(rng_streams.key(s, n)).tolist())
          for s in range(3) for n in rng_streams.NAMES}
  assert len(keys) == 3 * len(rng_streams.NAMES)       # no two streams share a key


def test_key_under_jit_is_a_constant_not_a_leaked_tracer():
  f = jax.jit(lambda x: jax.random.fold_in(rng_streams.key(11, "selection"), x))
  a = f(3)
  b = jax.random.fold_in(rng_streams.key(11, "selection"), 3)   # cached, used eagerly
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_order_seed_drives_batch_indices_as_default_rng_of_seed_stream_epoch():
  seed = rng_streams.order_seed(5, "holdout_order")
  assert seed == (5, rng_streams.NAMES.index("holdout_order") + 1) == (5, 4)
  n, b = 10, 4
  stream = np.concatenate([np.random.default_rng([5, 4, e]).permutation(n) for e in range(2)])
  np.testing.assert_array_equal(data.batch_indices(seed, 2, n, b), stream[8:12])
  # Streams of one seed differ; an int seed s is the stream (s,).
  other = data.batch_indices(rng_streams.order_seed(5, "train_order"), 2, n, b)
  assert not np.array_equal(other, data.batch_indices(seed, 2, n, b))
  np.testing.assert_array_equal(data.batch_indices(3, 1, n, b), data.batch_indices((3,), 1, n, b))


def test_unknown_stream_and_bad_tuple_seed_are_one_line_errors():
  with pytest.raises(ValueError, match="rng stream must be one of"):
    rng_streams.key(0, "dropout")
  with pytest.raises(ValueError, match="seed must be an int >= 0, got -2"):
    data.batch_indices((1, -2), 0, 10, 4)
  with pytest.raises(ValueError, match="non-empty tuple"):
    data.batch_indices((), 0, 10, 4)
