"""Tests of the manager's HTTP API, against a real uvicorn server."""
