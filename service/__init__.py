"""uniserve's HTTP service: settings, app factory, routes, serving core, cache, event store."""
