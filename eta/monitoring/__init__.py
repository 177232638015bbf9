"""Monitoring: the drift verdict the services export and the retraining decision."""
