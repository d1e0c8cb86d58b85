"""Run safety (layer 3): orbax checkpoints and their manifests, reference-model and
pruning caches, preemption, divergence guard, progress lines, metric writers."""
