"""The states of a job, the one list the store, the jobs, the API and the dashboard use (and
nothing else: the dashboard imports it without a database driver)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """The states of a job: the one list, used by the store, the jobs, the API and the dashboard.

    ``queued`` and ``running`` are live; ``promoted`` and ``rejected`` (by the gate),
    ``failed``, ``cancelled`` (by request) and ``done`` (a scan) are final.
    """

    QUEUED = "queued"
    RUNNING = "running"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: a job that decides nothing (a scan of the data, ``loop.scan``) ended well
    DONE = "done"

    @property
    def live(self) -> bool:
        return self in LIVE_STATES


LIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
FINAL_STATES = (
    JobState.PROMOTED,
    JobState.REJECTED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.DONE,
)
#: The live states as SQL, for the index that allows one live job of a kind.
LIVE_SQL = "state IN (" + ", ".join(f"'{state.value}'" for state in LIVE_STATES) + ")"
