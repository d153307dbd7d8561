"""Benchmarks (not part of the package or the test run): see bench/README.md."""
