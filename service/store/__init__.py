"""Stores behind the serving core: result cache, recent-event store, their Redis backends, the
Redis link with its circuit breaker, and single-flight. No HTTP framework is imported here."""
