"""Canaries for the job queues teams already run: Celery (``pycanary.integrations.celery``)
and RQ (``pycanary.integrations.rq``) on Redis. pycanary decides each job's lane, records
each attempt per version and drains rollbacks; the broker keeps carrying the jobs
(docs/integrations.md)."""
