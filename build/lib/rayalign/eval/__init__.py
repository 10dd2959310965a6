"""Evaluation: benchmark loaders, a refusal detector, metrics with bootstrap confidence intervals."""
