"""Benchmarks: each script prints figures and the ratio to a baseline measured in the same run."""
