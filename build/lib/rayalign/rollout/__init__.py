"""Sampling: the output format, sampler backends, Ray actors, pool, Ray Data path."""
