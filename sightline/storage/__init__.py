"""The service's state, shared by the server, the monitor CLI, feedback export and (later) workers and replicas:
`store.py` (the database: predictions, review queue and labels, keys and roles, monitoring rows; SQLite by default,
PostgreSQL at scale) and `images.py` (the content-addressed store of kept images). Below the stages, so `feedback
export` reads what `serve` writes without importing the server."""
