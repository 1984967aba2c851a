"""Evaluation: batched greedy generation and the recipe's metrics."""
