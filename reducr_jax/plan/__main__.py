"""``python -m reducr_jax.plan``: the accelerator plan (see :mod:`reducr_jax.plan`)."""

from absl import flags

from reducr_jax import cli
from reducr_jax import plan

if __name__ == "__main__":
  flags.FLAGS.set_default("workdir", "")      # shared flags: the plan writes no workdir
  cli.run(plan.main)
