"""Tests of `service/core`: batchers, engine, hot swap, router and fan-out."""
