"""What the tests share: :mod:`tests.support.models` (random and hand-built models, their tasks)
and :mod:`tests.support.service` (Redis, Celery workers and uvicorn as real processes)."""
