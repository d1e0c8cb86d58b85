"""The README's library example runs as written."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_examples_run(capsys, monkeypatch):
  with open(os.path.join(REPO, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
  assert len(blocks) == 2, "README has the pure-function and the own-rule examples"
  monkeypatch.chdir(REPO)
  pure, own_rule = ({}, {})
  exec(compile(blocks[0], "README.md", "exec"), pure)  # pylint: disable=exec-used
  w = pure["mwu"].weights(pure["log_w"])
  assert abs(float(w.sum()) - 1.0) < 1e-5 and w.shape == (10,)
  assert "[" in capsys.readouterr().out
  try:
    exec(compile(blocks[1], "README.md", "exec"), own_rule)  # pylint: disable=exec-used
  finally:
    own_rule["selectors"].unregister("smallest_loss")
  assert own_rule["results"]["method"] == "smallest_loss"
  assert capsys.readouterr().out.splitlines()[-1].startswith("smallest_loss 0.")
