"""The HTTP layer: FastAPI app factory, lifespan, state, dependencies, routes, middleware,
auth, load shedding, metrics, request/response schemas and the error handlers."""
