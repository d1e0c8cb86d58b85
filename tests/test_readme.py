"""The README's library example runs as written."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(capsys):
  with open(os.path.join(REPO, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
  assert blocks, "README has no python example"
  for block in blocks:
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    w = namespace["mwu"].weights(namespace["log_w"])
    assert abs(float(w.sum()) - 1.0) < 1e-5 and w.shape == (10,)
  assert "[" in capsys.readouterr().out
