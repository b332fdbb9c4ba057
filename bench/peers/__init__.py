"""The peers workerflow is measured against: Celery and TaskFlow's worker-based engine."""
