"""Name → factory registries for pluggable rules (selection rules, reweightings)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Generic, Mapping, TypeVar

import jax
import jax.numpy as jnp


T = TypeVar("T")
Factory = Callable[[Any], T]


class Registry(Generic[T]):
  """Factories ``factory(config) -> rule`` by name, in registration order.

  Args:
    kind: what is registered, for messages (``"selector"``).
    field: the config field that names a rule (``"config.selection.method"``).
    needs: the names a rule's ``needs`` may hold.
  """

  def __init__(self, kind: str, field: str, needs: frozenset):
    self.kind, self.field, self.needs = kind, field, needs
    self._factories: dict[str, Factory] = {}

  def register(self, name: str, factory: Factory) -> Factory:
    """Registers ``factory`` as ``name``; a one-line ``ValueError`` if taken or empty."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
    if name in self._factories:
      old = self._factories[name]
      raise ValueError(f"{self.kind} {name!r} is already registered (by "
                       f"{old.__module__}.{old.__qualname__})")
    self._factories[name] = factory
    return factory

  def unregister(self, name: str) -> None:
    """Removes ``name`` if registered (tests, notebooks re-running a cell)."""
    self._factories.pop(name, None)

  def names(self) -> tuple[str, ...]:
    return tuple(self._factories)

  def build(self, name: str, config: Any) -> T:
    """The rule ``name`` built from ``config``.

    Raises:
      ValueError: one line for an unknown name (listing the registered ones), the
        factory's own error, or ``needs`` outside the allowed names.
    """
    if name not in self._factories:
      raise ValueError(f"{self.field} must be one of {list(self._factories)}, got {name!r}")
    rule = self._factories[name](config)
    unknown = set(rule.needs) - self.needs
    if unknown:
      raise ValueError(f"{self.kind} {name!r} needs unknown inputs {sorted(unknown)}; "
                       f"allowed: {sorted(self.needs)}")
    return rule


def config_errors(fn: Callable, fields: Mapping[str, str]) -> Callable:
  """``fn`` whose one-line ``ValueError`` about an argument names the config field instead.

  The pure factories (and the functions they return, e.g. ``init``) raise about their own
  arguments: ``"sampling must be one of [...], got 'x'"``; the ``from_config`` layer wraps
  them with ``{"sampling": "config.selection.sampling"}`` so a config user reads
  ``"config.selection.sampling must be one of [...], got 'x'"``. Other errors pass
  unchanged.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except ValueError as e:
      message = str(e)
      for arg, field in fields.items():
        if message.startswith(arg + " "):
          raise ValueError(field + message[len(arg):]) from None
      raise
  return wrapped


def call_rule(kind: str, fn: Callable, inputs, field_needs: Mapping[str, str], *args,
              **kwargs):
  """``fn(*args, **kwargs)`` with ``inputs`` among ``args``; a rule that reads an input
  field it did not declare in its ``needs`` (so the trainer left it ``None``) fails with
  one line naming the field and the ``needs`` entry to declare, instead of
  ``AttributeError: 'NoneType' object has no attribute 'shape'`` from deep inside.

  ``inputs`` (a ``NamedTuple``) is handed to ``fn`` as a subclass that records which
  fields ``fn`` reads (trace time only; no runtime cost); only an exception raised while
  a ``None`` field was read is rewritten, so a rule that checks ``inputs.x is None``
  itself works as before.

  Args:
    kind: what is called, for the message (``"selector.select"``).
    fn: the rule's function; inputs: its inputs, passed in ``args`` (replaced there).
    field_needs: input field → the ``needs`` name that makes the trainer fill it.
  """
  read = set()

  class Recording(type(inputs)):
    __slots__ = ()

    def __getattribute__(self, name):
      if name in field_needs:
        read.add(name)
      return super().__getattribute__(name)

  recording = Recording(*inputs)
  args = tuple(recording if a is inputs else a for a in args)
  try:
    return fn(*args, **kwargs)
  except (AttributeError, TypeError, ValueError, IndexError) as e:
    missing = sorted(f for f in read if getattr(inputs, f) is None)
    if not missing:
      raise
    declare = ", ".join(f"inputs.{f} (needs {field_needs[f]!r})" for f in missing)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{kind} read {declare} without declaring it in its needs, so it "
                     f"was None ({type(e).__name__}: {first})") from e


def class_weights(rule, state, num_classes: int) -> jax.Array:
  """The class weights a rule keeps → ``float32[C]``: ``rule.class_weights(state)``
  (REDUCR's MWU weights, Group DRO's ``q``), or uniform ``1/C`` for a rule without
  (``rule.class_weights is None``). ``rule``: a selector or a reweighter."""
  if rule.class_weights is None:
    return jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  return rule.class_weights(state)
