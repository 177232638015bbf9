"""eta: delivery-time prediction shared core (settings, orders schema, features, model I/O)."""
