"""Benchmarks: `make bench` (speed against a plain PyTorch loop) and `make bench-quality`."""
