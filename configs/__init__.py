"""The built-in configs (``python -m reducr_jax.main --config=configs/<name>.py``).

Each module defines ``get_config()``; children load their parent with the light loader
:func:`reducr_jax.config.config_files.load_config` (no trainer import). Loaded by name from any
directory: ``reducr_jax.load_config("cifar10")``, ``reducr_jax.default_config()``.
"""
