"""Training: config, trainable parameters, atomic checkpoints, the Trainer subclass and callbacks."""
