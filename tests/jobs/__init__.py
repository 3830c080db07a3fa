"""Tests of `service/jobs`: the Ray rebuild."""
