"""Command modules, one per stage. Each exposes `register(app)`."""
