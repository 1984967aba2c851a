"""Datasets in the recipe's jsonl format: records, training examples, batching, sources."""
