"""Store: the one database (SQLite or PostgreSQL): predictions, feedback, jobs, the audit.

``database`` (engine and tables), ``migrations`` (the schema's history, Alembic), ``jobstates``
(a job's states), ``audit`` (who changed the uploads, and how), and the ``Store`` below.

``Store`` is all three (``predictions.PredictionLog``, ``queue.JobQueue`` and
``pointer.ModelPointer``, the registry's numbers and current model, over one connection,
``base.Connected``); the engine and the schema are ``imgclf.store.database``'s, the job states
``imgclf.store.jobstates``'. Create a ``Store`` in the process that uses it (after gunicorn forks):
it holds a connection pool, and refuses a database whose schema is behind rather than changing
it from every worker (``imgclf db upgrade`` does).
"""

from __future__ import annotations

from imgclf.store.base import (
    UNAVAILABLE,
    FeedbackExists,
    JobConflict,
    JobFinished,
    JobNotFound,
    StoreError,
    unavailable,
)
from imgclf.store.database import create_engine, describe_url, metadata
from imgclf.store.jobstates import FINAL_STATES, LIVE_STATES, JobState
from imgclf.store.logwriter import PredictionLogWriter
from imgclf.store.pointer import ModelPointer
from imgclf.store.predictions import PredictionLog
from imgclf.store.queue import HEARTBEAT_TIMEOUT_S, HOST, QUEUE_TIMEOUT_S, JobQueue

__all__ = [
    "FeedbackExists",
    "UNAVAILABLE",
    "unavailable",
    "FINAL_STATES",
    "HEARTBEAT_TIMEOUT_S",
    "HOST",
    "LIVE_STATES",
    "QUEUE_TIMEOUT_S",
    "JobConflict",
    "JobFinished",
    "JobNotFound",
    "JobState",
    "PredictionLogWriter",
    "Store",
    "StoreError",
    "create_engine",
    "describe_url",
    "metadata",
]


class Store(PredictionLog, JobQueue, ModelPointer):
    """Prediction log, feedback, jobs and the model pointer in one database (see the module
    docstring)."""
