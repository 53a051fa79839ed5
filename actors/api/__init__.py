"""The manager's HTTP API: JSON over HTTP (Starlette on uvicorn), ``/metrics`` and OpenAPI."""
