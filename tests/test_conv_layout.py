"""Convolutions re-emitted in NHWC / HWIO order: same values and gradients, canonical jaxprs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import primitives as jprim

from reducr_jax.core import conv_layout


def _convs(closed):
  """Every ``conv_general_dilated`` equation of a closed jaxpr, nested jaxprs included."""
  out = []
  for eqn in closed.jaxpr.eqns:
    if eqn.primitive is jprim.conv_general_dilated_p:
      out.append(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _convs(jax.extend.core.ClosedJaxpr(sub, ()))
  return out


def test_canonical_numbers():
  # NHWC / HWIO / NHWC: batch 0, features 3; kernel out 3, in 2, spatial 0 and 1.
  assert tuple(map(tuple, conv_layout.canonical_numbers(4))) == ((0, 3, 1, 2), (3, 2, 0, 1),
                                                                 (0, 3, 1, 2))
  nhwc = lax.conv_dimension_numbers((1, 5, 5, 2), (3, 3, 2, 4), ("NHWC", "HWIO", "NHWC"))
  nchw = lax.conv_dimension_numbers((1, 2, 5, 5), (4, 2, 3, 3), ("NCHW", "OIHW", "NCHW"))
  assert conv_layout.is_canonical(nhwc, 4) and not conv_layout.is_canonical(nchw, 4)


@pytest.mark.parametrize("specs, lhs_shape, rhs_shape, kw", [
    (("NCHW", "OIHW", "NCHW"), (2, 4, 9, 7), (6, 2, 3, 2),
     dict(window_strides=(2, 1), padding=((1, 2), (0, 1)), rhs_dilation=(1, 2),
          feature_group_count=2)),
    (("NHWC", "OIHW", "CHWN"), (3, 8, 6, 2), (5, 2, 3, 3),
     dict(window_strides=(1, 2), padding=((1, 1), (2, 0)), lhs_dilation=(2, 1))),
    (("NWC", "WOI", "NCW"), (2, 11, 3), (4, 5, 3), dict(window_strides=(3,), padding="VALID")),
])
def test_canonical_conv_equals_the_convolution_and_its_gradients(specs, lhs_shape, rhs_shape, kw):
  lhs = jax.random.normal(jax.random.key(0), lhs_shape)
  rhs = jax.random.normal(jax.random.key(1), rhs_shape)

  def conv(lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, dimension_numbers=specs, **kw)

  def loss(lhs, rhs):
    out = conv(lhs, rhs)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))

  grad = jax.grad(loss, argnums=(0, 1))
  fast_conv, fast_grad = conv_layout.canonical_convs(conv), conv_layout.canonical_convs(grad)
  np.testing.assert_allclose(fast_conv(lhs, rhs), conv(lhs, rhs), rtol=1e-5, atol=1e-5)
  for got, want in zip(fast_grad(lhs, rhs), grad(lhs, rhs)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The gradient's convolutions (input and kernel gradients) are not canonical as JAX
  # emits them, and all are after the transformation.
  before = _convs(jax.make_jaxpr(grad)(lhs, rhs))
  after = _convs(jax.make_jaxpr(fast_grad)(lhs, rhs))
  assert len(before) == len(after) >= 2
  assert not all(conv_layout.is_canonical(e.params["dimension_numbers"], len(lhs_shape))
                 for e in before)
  assert all(conv_layout.is_canonical(e.params["dimension_numbers"], len(lhs_shape))
             for e in after)


def test_canonical_convs_inlines_nested_jit_and_keeps_pytrees():
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 2, 4))

  @jax.jit
  def inner(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def fn(tree):
    grads = jax.grad(lambda k: jnp.sum(inner(tree["x"], k) ** 2))(tree["k"])
    return {"g": grads, "n": tree["n"] + 1}

  tree = {"x": jnp.ones((2, 5, 5, 2)), "k": kernel, "n": jnp.int32(3)}
  got = conv_layout.canonical_convs(fn)(tree)
  want = fn(tree)
  assert set(got) == {"g", "n"} and int(got["n"]) == 4
  np.testing.assert_allclose(got["g"], want["g"], rtol=1e-5, atol=1e-4)
  convs = _convs(jax.make_jaxpr(conv_layout.canonical_convs(fn))(tree))
  assert convs and all(conv_layout.is_canonical(e.params["dimension_numbers"], 4)
                       for e in convs)
