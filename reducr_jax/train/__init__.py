"""The trainer (layer 5): state, step and loop of stage 2 (``trainer``), stage 1
(reference models), evaluation, optimizers, device placement, pruning stage."""
