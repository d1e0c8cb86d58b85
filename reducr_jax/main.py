"""Entry point: ``python -m reducr_jax.main --config=configs/<name>.py --workdir=<dir>``.

Several processes (TPU pod slices, SLURM GPU clusters; see ``launch/``): run the same
command in every process; JAX's runtime is started by ``jax.distributed.initialize`` —
auto-detected on TPU VMs and under SLURM, or explicit with ``--coordinator_address``,
``--num_processes`` and ``--process_id``. Only process 0 logs and writes results.

Every config field can be overridden on the command line, e.g.
``--config.selection.method=rho_loss --config.num_steps=500``. Bad input (an unknown field
or value, a missing or broken ``--config`` file, an unwritable workdir) ends with a
one-line ``error: ...`` and exit status 2, before anything is compiled. A run stopped by
SIGTERM/SIGINT checkpoints the step it finished and exits 143/130; a diverged run, a full
disk or a workdir in use by another run exit 1 (README "Failure modes").
"""

from __future__ import annotations

from reducr_jax import cli


def print_table(results: dict) -> None:
  """Per-class validation/test accuracy and final class weight of one run."""
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


def main(argv):
  del argv
  # Imported here so `--help` and flag errors do not pay for importing jax.
  import jax  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import trainer as train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(cli.config(), cli.WORKDIR.value)
  if jax.process_index() == 0:
    print_table(results)


if __name__ == "__main__":
  cli.run(main)
