"""The serving core: engine, batchers, request-level serving, hot-swap reloader, router and
fan-out. Plain Python objects with async methods; no HTTP framework is imported here."""
