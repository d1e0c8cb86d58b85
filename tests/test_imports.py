"""The package's imports form no cycle, counting imports inside functions too.

A lazy (function-level) import that closes a cycle still works at run time, but it hides
a layering mistake; shared pieces belong in leaf modules (e.g. ``data/split_types.py``,
``models/merge.py``). The graph is read from the source with ``ast`` (nothing imported).
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "reducr_jax"


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in (ROOT / PACKAGE).rglob("*.py"):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    out[name.removesuffix(".__init__")] = path
  return out


def _imports(path: pathlib.Path, modules) -> set[str]:
  """Package modules that ``path`` imports anywhere (module level or inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        found.add(sub if sub in modules else node.module)
  return {m for m in found if m in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (iterative DFS)."""
  state: dict[str, int] = {}             # 1 on the stack, 2 done
  for start in sorted(graph):
    if start in state:
      continue
    stack = [(start, iter(sorted(graph[start])))]
    path = [start]
    state[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = 2
        stack.pop()
        path.pop()
      elif state.get(child) == 1:
        return path[path.index(child):] + [child]
      elif child not in state:
        state[child] = 1
        path.append(child)
        stack.append((child, iter(sorted(graph[child]))))
  return None


def test_no_import_cycles():
  modules = _modules()
  graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
  assert "reducr_jax.data.split_types" in graph["reducr_jax.data.real"]   # the walker sees edges
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
