"""Placement helpers of the data-parallel stages (reducr_jax.train.sharding)."""

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.train import sharding


def test_replicate_makes_copies_a_donating_step_writes_in_place():
  """On CPU, device_put of a host array aliases it; a donated step could not reuse such a
  buffer and allocated its outputs anew (a second copy of the expert state)."""
  devices = jax.local_devices()[:1]
  a = jnp.arange(1 << 20, dtype=jnp.float32)       # e.g. the stacked experts from init
  rep = sharding.replicate({"a": a}, devices)["a"]
  assert rep.shape == (1, 1 << 20)
  np.testing.assert_array_equal(np.asarray(rep)[0], np.asarray(a))
  ptr = rep.addressable_data(0).unsafe_buffer_pointer()
  assert ptr != a.unsafe_buffer_pointer()            # a copy, not a view of the input
  out = jax.jit(lambda a: a + 1.0, donate_argnums=0)(rep)
  assert out.addressable_data(0).unsafe_buffer_pointer() == ptr     # written in place


def test_replicate_consume_deletes_the_input_once():
  devices = jax.local_devices()[:1]
  a = jnp.arange(6.0).reshape(2, 3)
  tree = {"x": a, "same": a, "host": np.ones(2, np.int32), "none": None}
  rep = sharding.replicate(tree, devices, consume=True)
  assert a.is_deleted()
  assert rep["x"] is rep["same"] and rep["none"] is None
  np.testing.assert_array_equal(np.asarray(rep["x"])[0], np.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(np.asarray(rep["host"]), [[1, 1]])
  kept = jnp.ones(3)
  sharding.replicate({"k": kept}, devices)
  assert not kept.is_deleted()
