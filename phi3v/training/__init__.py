"""Pieces of the training entry point: strategy set-up and resumable checkpoints."""
