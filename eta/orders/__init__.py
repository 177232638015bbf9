"""Orders in: the canonical schema and its validation, ingest, BigQuery reads and the simulator."""
