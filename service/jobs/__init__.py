"""Offline work: the rebuild pipeline, catalogue encoding, the Ray rebuild, bootstrap of the
embedded default, and the report."""
