"""Tests of `service/bench`: the ANN benchmark end to end."""
