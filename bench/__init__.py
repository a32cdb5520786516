"""Benchmarks: `make bench` prints figures and ratios; targets live here, never in timed tests."""
