"""core.collectives: identity without a mapped axis, the collective with one."""

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import collectives


def test_collectives_over_a_named_axis_and_without():
  x = jnp.arange(12.0).reshape(3, 2, 2)                       # 3 "devices" × [b=2, 2]
  tree = {"a": x, "b": x[:, 0, 0]}
  summed = jax.vmap(lambda t: collectives.psum(t, "d"), axis_name="d")(tree)
  np.testing.assert_allclose(summed["a"][1], x.sum(0))
  np.testing.assert_allclose(summed["b"], np.full(3, float(x[:, 0, 0].sum())))
  rows = jax.vmap(lambda r: collectives.gather_rows(r, "d"), axis_name="d")(x)
  assert rows.shape == (3, 6, 2)                              # device-major [n·b, 2]
  np.testing.assert_allclose(rows[2], x.reshape(6, 2))
  cols = jax.vmap(lambda r: collectives.gather_rows(r, "d", axis=1), axis_name="d")(x)
  assert cols.shape == (3, 2, 6)                              # [2, n·b] along dimension 1
  np.testing.assert_allclose(cols[0], np.concatenate(list(x), axis=1))
  index = jax.vmap(lambda r: collectives.device_index("d"), axis_name="d")(x)
  np.testing.assert_array_equal(index, [0, 1, 2])
  assert collectives.psum(tree, None) is tree
  assert collectives.gather_rows(x, None) is x
  assert collectives.device_index(None) == 0
