"""Tests of `models/`: encoders, training, evaluation, data loaders."""
