"""Tests of `service/api`: the HTTP layer through the real app and real servers."""
