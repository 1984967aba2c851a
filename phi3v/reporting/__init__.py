"""Reporting: regenerated accuracy and speed tables, figures, and the recipe's reference tables."""
