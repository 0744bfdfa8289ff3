"""Benchmarks (`make bench`): scripts that print tables and write JSON to runs/bench/."""
