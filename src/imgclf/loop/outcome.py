"""How a candidate ended (``Outcome``): registered as a version, promoted or not, and why.

Written by the notebooks (``promotion.register_and_decide``) into the run's summary, read back
once by the registering run (``loop.registering``). Light: no Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.loop import gate
from imgclf.store.jobstates import JobState


@dataclass(frozen=True)
class Outcome:
    """How a candidate ended: registered as ``version``, promoted or not, and why."""

    version: str
    promoted: bool
    decision: gate.GateDecision
    parent_version: str | None = None
    #: The version the gate compared with (None: no current model), and the policy: a runner
    #: promotes only if that version is still current (unless the policy is "always").
    compared_with: str | None = None
    policy: str = "if-not-worse"
    #: Promoted by the gate, to be made current by the registering run (``registering.settle``).
    pending: bool = False

    @property
    def state(self) -> JobState:
        """``promoted`` or ``rejected``: the final state of a retrain job with this outcome."""
        return JobState.PROMOTED if self.promoted else JobState.REJECTED

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "promoted": self.promoted,
            "parent_version": self.parent_version,
            "decision": self.decision.as_dict(),
            "compared_with": self.compared_with,
            "policy": self.policy,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, values: dict | None) -> Outcome:
        """Read an outcome back (from a run's summary).

        Raises:
            ValueError: ``values`` is not what ``as_dict`` wrote (or is missing).
        """
        if not isinstance(values, dict) or not {"version", "promoted", "decision"} <= set(values):
            raise ValueError(f"not a candidate's outcome: {values!r}")
        return cls(
            version=values["version"],
            promoted=bool(values["promoted"]),
            decision=gate.GateDecision(**values["decision"]),
            parent_version=values.get("parent_version"),
            compared_with=values.get("compared_with"),
            policy=values.get("policy", "if-not-worse"),
            pending=bool(values.get("pending", False)),
        )

    def headline(self) -> str:
        """The outcome in one line, for the report."""
        decision = self.decision
        current = "none" if decision.current is None else f"{decision.current:.4f}"
        scores = f"{decision.metric} {decision.candidate:.4f} against {current}"
        if self.pending:
            return (
                f"**PASSED THE GATE**: registered {self.version} ({scores}); made current when "
                f"the run ends if {self.compared_with or 'no model'} is still current. "
                f"{decision.reason}"
            )
        return f"**{self.state.upper()}**: registered {self.version} ({scores}). {decision.reason}"

    def summary(self) -> dict:
        """The outcome as the run summary records it (``outcome``, plus flat figures)."""
        decision = self.decision
        return {
            "outcome": self.as_dict(),
            "version": self.version,
            "promoted": self.promoted,
            "decision": self.state.value,
            "reason": decision.reason,
            "metric": decision.metric,
            "candidate": decision.candidate,
            "current": decision.current,
            "blocked": decision.blocked,
            "verdict": decision.verdict,
            "inconclusive": decision.inconclusive,
        }
