"""Benchmarks (entry points in scripts/): the service against its peers, ANN indexes, MUVERA."""
