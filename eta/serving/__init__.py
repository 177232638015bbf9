"""Serving: the prediction core, its caches, the HTTP API models and guard, telemetry, the prediction log,
and how the services are deployed and pre-scaled."""
