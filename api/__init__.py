"""The HTTP API (FastAPI): validates job specs, enqueues jobs by task name, serves graphs. No torch."""
