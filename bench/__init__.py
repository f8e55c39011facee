"""Benchmarks of the cluster against simulated nodes: ``python -m bench [--quick]``."""
