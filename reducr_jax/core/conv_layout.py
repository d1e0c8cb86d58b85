"""Convolutions in NHWC / HWIO order, so XLA:CPU runs them with Eigen inside loops too.

XLA:CPU runs a convolution fast (Eigen's multithreaded kernel) only when its dimension
numbers are *canonical*: input ``[N, *spatial, C]``, kernel ``[*spatial, I, O]``, output
``[N, *spatial, C]``. A model written in NHWC / HWIO (flax's default) is canonical going
forward, but the two convolutions of its backward pass that JAX emits are not: the input
gradient takes the kernel as ``[*spatial, O, I]`` and the kernel gradient takes the input
with batch and features swapped. XLA:CPU's ``ConvCanonicalization`` pass rewrites those
with transposes, but only in the **entry computation** of the module (it walks
``module->entry_computation()``): inside a ``while`` body (``lax.fori_loop``, ``lax.map``,
``lax.scan``) or a ``lax.cond`` branch they stay as they are and fall back to XLA's naive
loop emitter, one thread, many times slower. Measured on 2 cores (``benchmarks/stage1.py``,
issue 23): one ResNet's training step inside the in-place ``map`` of
:func:`reducr_jax.train.experts_step.experts_train_step` took 8–70× the time of the same step
at the top level.

:func:`canonical_convs` is a function transformation that does the canonicalisation in
JAX instead: it traces a function and re-emits every ``conv_general_dilated`` whose
dimension numbers are not canonical as transpose → canonical convolution → transpose,
which is exactly what XLA does at the top level (same values, same FLOPs), so the body of
a loop compiles to the same kernels as a top-level step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
from jax import lax
from jax.extend import core as jcore
from jax.extend.core import primitives as jprim


def canonical_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Dimension numbers of ``[N, *spatial, C]`` ⊛ ``[*spatial, I, O]`` → ``[N, *spatial, C]``
  for ``ndim``-dimensional operands (``lax.ConvDimensionNumbers`` lists, per operand,
  the batch/output-feature axis, the feature/input-feature axis, then the spatial axes)."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1) + spatial,
                                  rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
                                  out_spec=(0, ndim - 1) + spatial)


def is_canonical(dimension_numbers: lax.ConvDimensionNumbers, ndim: int) -> bool:
  """Whether a convolution's dimension numbers are already NHWC / HWIO / NHWC."""
  return tuple(map(tuple, dimension_numbers)) == tuple(map(tuple, canonical_numbers(ndim)))


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
  out = [0] * len(perm)
  for i, p in enumerate(perm):
    out[p] = i
  return tuple(out)


def canonical_conv(lhs: jax.Array, rhs: jax.Array, *, dimension_numbers, **params) -> jax.Array:
  """``lax.conv_general_dilated_p`` with any dimension numbers, computed as a canonical
  convolution between transposes (``params``: the primitive's other parameters, e.g.
  from a jaxpr equation). The window, padding, dilations and group counts refer to the
  spatial axes in the order the dimension numbers list them, which the transposes keep."""
  ndim = lhs.ndim
  if is_canonical(dimension_numbers, ndim):
    return jprim.conv_general_dilated_p.bind(lhs, rhs, dimension_numbers=dimension_numbers,
                                             **params)
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  to_nhwc = lambda spec: (spec[0],) + tuple(spec[2:]) + (spec[1],)  # noqa: E731
  lhs_t = lax.transpose(lhs, to_nhwc(lhs_spec))
  rhs_t = lax.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
  out = jprim.conv_general_dilated_p.bind(lhs_t, rhs_t,
                                          dimension_numbers=canonical_numbers(ndim), **params)
  return lax.transpose(out, _inverse(to_nhwc(out_spec)))


def _eval(jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
  """Evaluates ``jaxpr`` under the current trace with every convolution canonical
  (:func:`canonical_conv`), inlining nested ``jit`` calls so theirs are too."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is jprim.conv_general_dilated_p:
      outs = [canonical_conv(*invals, **eqn.params)]
    elif eqn.primitive is jprim.jit_p:
      sub = eqn.params["jaxpr"]
      outs = _eval(sub.jaxpr, sub.consts, invals)
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*invals, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, x in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = x
  return [read(v) for v in jaxpr.outvars]


def canonical_convs(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with every convolution it computes (forward and, for a gradient function,
  backward) in canonical NHWC / HWIO order (:func:`canonical_conv`): same values, but
  XLA:CPU keeps its fast convolutions when the call sits inside a loop or a conditional.

  ``fn`` takes and returns pytrees of arrays (positional arguments only); it is traced
  once per call (under the caller's trace, e.g. inside a ``fori_loop`` body).
  """
  @functools.wraps(fn)
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)
  return wrapped
