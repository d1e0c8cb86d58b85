"""Pure JAX math (layer 0): selection scores and rules' math, class weights (MWU),
expert losses (eq. 8), metrics, meta-reweighting, group DRO, pruning, checks,
the rule registry and the package's exception classes. Imports only core/ and
jax/flax/optax/chex/numpy."""
