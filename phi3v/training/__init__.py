"""Training: the loop, strategies, checkpoints, FLOPs, the speed benchmark and the demo's base model."""
