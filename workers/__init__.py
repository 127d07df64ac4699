"""Celery workers: take a job id, run circuitd.discover, store the graph. Thin by design."""
