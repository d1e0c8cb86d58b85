"""docs/config_fields.md and the configs cannot drift: every value the doc's "ours" column
gives for a config is the value that config file holds, and every field a config holds
has a row. Plus the official values the paper configs must carry (issue 24)."""

import os
import re

import numpy as np
import pytest

from reducr_jax.config import configuration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "config_fields.md")
# The doc's labels → config files.
CONFIGS = {"default": "default", "C10": "cifar10", "C100": "cifar100", "CINIC": "cinic10",
           "C1M": "clothing1m", "MNLI": "mnli", "QQP": "qqp"}
_CELL = re.compile(r"(default|C10|C100|CINIC|C1M|MNLI|QQP|all:|others)\s*`([^`]*)`")


def _load(name):
  return configuration.load_config(os.path.join(REPO, "configs", f"{name}.py"))


def _fields(node, prefix=""):
  """``{dotted field: value}`` of every field and every dict node (a value of its own)."""
  out = {}
  for key, value in node.items():
    name = f"{prefix}{key}"
    out[name] = value
    if hasattr(value, "items"):
      out.update(_fields(value, name + "."))
  return out


def _is_leaf(value) -> bool:
  return not hasattr(value, "items") or not value        # an empty dict shows as {}


def _shown(value) -> str:
  """How the doc shows a value: its ``repr`` (``{}`` for an empty dict node)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return repr(value)


def _doc_rows() -> dict:
  """``{field: ours cell}`` of the "All fields" table."""
  text = open(DOC, encoding="utf-8").read().split("## All fields", 1)[1]
  rows = {}
  for line in text.splitlines():
    m = re.match(r"\| `([^`]+)` \| (.*?) \| ", line)
    if m:
      rows[m.group(1)] = m.group(2)
  return rows


def _documented(cell: str) -> dict:
  """``{config label: shown value}`` from an "ours" cell."""
  pairs = _CELL.findall(cell)
  out = {label: value for label, value in pairs if label in CONFIGS}
  rest = [value for label, value in pairs if label in ("all:", "others")]
  if rest:
    out.update({label: rest[0] for label in CONFIGS if label not in out})
  return out


@pytest.fixture(scope="module")
def configs():
  return {label: _fields(_load(name)) for label, name in CONFIGS.items()}


def test_every_documented_value_is_the_config_value(configs):
  rows = _doc_rows()
  checked = 0
  for field, cell in rows.items():
    for label, shown in _documented(cell).items():
      if field not in configs[label]:
        assert "all:" in cell or "others" in cell, (field, label, "not in that config")
        continue
      actual = _shown(configs[label][field])
      if shown.startswith("…"):                 # a long value, shown by its end
        assert actual.endswith(shown[1:]), (field, label, actual, shown)
      else:
        assert actual == shown, f"{field} {label}: config {actual}, doc {shown}"
      checked += 1
  assert checked > 500


def test_every_config_field_has_a_row_that_gives_its_value(configs):
  """Each leaf is documented by its own row or by the row of a dict it is in (e.g.
  ``method_overrides.uniform``); sections (``dataset``, ``model``, …) have no row."""
  rows = _doc_rows()
  for label, fields in configs.items():
    for field, value in fields.items():
      if not _is_leaf(value):
        continue
      parts = field.split(".")
      names = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
      covering = [n for n in names if n in rows]
      assert covering, f"{field} ({CONFIGS[label]}.py) has no row in docs/config_fields.md"
      assert label in _documented(rows[covering[0]]), (
          f"{covering[0]}: the doc gives no value for {label} ({CONFIGS[label]}.py)")


def test_paper_configs_carry_the_official_values():
  for name in ("cifar10", "cifar100", "cinic10", "clothing1m", "mnli", "qqp"):
    c = _load(name)
    assert (c.dataset.imbalance_mode, c.dataset.label_noise_mode) == ("weighted_sampler",
                                                                       "any"), name
    assert c.dataset.split_mode == ("random" if name in ("cinic10", "clothing1m")
                                    else "official"), name
    assert c.selection.grad_norm_sampling == "top_k"
    weighted = configuration.apply_method_overrides(
        configuration.with_overrides(c, {"selection.method": "weighted"}))
    assert weighted.selection.clip is False and c.selection.clip is True, name
  for name in ("cifar10", "cifar100"):
    c = _load(name)
    assert tuple(c.model.mean) == tuple(c.model.std) == (0.5, 0.5, 0.5)
  c100 = _load("cifar100")
  assert c100.num_steps == int(np.ceil(175 * 25_000 / 320))          # 175 epochs
  for method, rule in (("uniform", "average"), ("reducr", "auto")):
    resolved = configuration.apply_method_overrides(
        configuration.with_overrides(c100, {"selection.method": method}))
    assert resolved.model_selection == rule
  qqp = _load("qqp")
  for method, batch in (("uniform", 320), ("train_loss", 320), ("rho_loss", 320),
                        ("reducr", 32), ("payoff", 32)):
    resolved = configuration.apply_method_overrides(
        configuration.with_overrides(qqp, {"selection.method": method}))
    assert resolved.batch_size == batch and configuration.num_selected(resolved) == batch // 10
  official = configuration.load_config(os.path.join(REPO, "configs", "cinic10.py:official"))
  for method, batch, wd in (("uniform", 640, 0.01), ("payoff", 320, 0.01),
                            ("weighted", 320, 0.01), ("reducr", 320, 0.1),
                            ("rho_loss", 320, 0.1), ("train_loss", 320, 0.1)):
    resolved = configuration.apply_method_overrides(
        configuration.with_overrides(official, {"selection.method": method}))
    assert (resolved.batch_size, resolved.optimizer.weight_decay) == (batch, wd), method


def test_method_overrides_by_hand_and_bad_entries():
  c = configuration.with_overrides(_load("default"), {"selection.method": "uniform"})
  c.method_overrides = {"uniform": {"batch_size": 640, "optimizer": {"weight_decay": 0.5}}}
  r = configuration.apply_method_overrides(c)
  assert (r.batch_size, r.optimizer.weight_decay, c.batch_size) == (640, 0.5, 320)
  assert configuration.apply_method_overrides(r).to_dict() == r.to_dict()   # a fixed point
  other = configuration.with_overrides(c, {"selection.method": "reducr"})
  assert configuration.apply_method_overrides(other) is other
  for table, message in (
      ({"greedy": {"batch_size": 1}}, r"^config.method_overrides key must be one of \["),
      ({"uniform": {"batch_sise": 1}},
       r"^config.method_overrides.uniform.batch_sise: config.batch_sise is not a config "
       r"field$"),
      ({"uniform": {"selection": {"method": "reducr"}}},
       r"^config.method_overrides.uniform.selection.method: config.selection.method "
       r"cannot be set per method$"),
      ({"uniform": 3}, r"^config.method_overrides.uniform must be a dict")):
    bad = configuration.with_overrides(c, {})
    bad.method_overrides = table
    with pytest.raises(configuration.ConfigError, match=message):
      configuration.validate_config(bad, 1)
