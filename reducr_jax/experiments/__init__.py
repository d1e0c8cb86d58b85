"""Experiments a researcher runs on any config: methods table, ablations, imbalance sweep.

``python -m reducr_jax.experiments.compare|ablate|imbalance --config=... --workdir=...``
"""
