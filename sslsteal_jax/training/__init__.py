"""Train state, optimizers, device mesh, checkpoints: shared by victim and surrogate training."""
