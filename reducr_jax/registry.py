"""Name → factory registries for pluggable rules (selection rules, reweightings)."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

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
