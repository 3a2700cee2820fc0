"""Evaluation: oracle tables (shapes world), grids, and later win rates and reward tables."""
