"""The web app served at /ui by the same FastAPI process (sightline/web/routes.py)."""
