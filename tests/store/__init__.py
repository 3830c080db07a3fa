"""Tests of `service/store`: cache and event store, against a real redis-server."""
