"""Benchmarks: each prints figures as ratios against a baseline run in the same process."""
