"""Entry point: ``python -m reducr_jax.main --config=configs/<name>.py --workdir=<dir>``.

Every config field can be overridden on the command line, e.g.
``--config.selection.method=rho_loss --config.num_steps=500``. Bad input (an unknown field
or value, an unwritable workdir) ends with a one-line ``error: ...`` and exit status 2,
before anything is compiled.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from reducr_jax import configuration

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _print_table(results: dict) -> None:
  names = results["class_names"]
  val, test = results["val"]["per_class_accuracy"], results["test"]["per_class_accuracy"]
  print(f"\n{results['method']}: kept model from step {results['best_step']} "
        "(best worst-class validation accuracy)")
  print(f"{'class':>10} {'val acc':>8} {'test acc':>9} {'weight':>7}")
  for i, name in enumerate(names):
    print(f"{name:>10} {val[i]:8.3f} {test[i]:9.3f} {results['class_weights'][i]:7.3f}")
  print(f"{'worst':>10} {results['val']['worst_class_accuracy']:8.3f} "
        f"{results['test']['worst_class_accuracy']:9.3f}")
  print(f"{'average':>10} {results['val']['accuracy']:8.3f} {results['test']['accuracy']:9.3f}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad ``--config.*`` overrides."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field as AttributeError("'name'\nDid you mean ...").
    text = str(e).encode().decode("unicode_escape").strip("'\"")
    field, _, hint = text.partition("\n")
    field = field.strip("'\"")
    arg = next((a.split("=")[0] for a in argv if a.startswith("--config.") and
                field in a.split("=")[0].split(".")), f"--config.…{field}")
    hint = f" ({hint.strip()})" if hint.strip() else ""
    print(f"error: {arg}: no such config field{hint}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  # Imported here so `--help` and flag errors do not pay for importing jax.
  from reducr_jax import train  # pylint: disable=g-import-not-at-top
  try:
    results = train.train_and_evaluate(FLAGS.config, _WORKDIR.value)
  except configuration.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  _print_table(results)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
