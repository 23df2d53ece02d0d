"""The learning loop as the API shows it: input drift and the automatic retraining policy."""

from __future__ import annotations

from flask_smorest import Blueprint

from imgclf.loop import policy
from serve import schemas, state

blueprint = Blueprint("loop", __name__, description="Drift and automatic retraining")


@blueprint.route("/drift")
@blueprint.response(200, schemas.Drift)
def drift():
    """Production inputs against the training data: a Kolmogorov-Smirnov test per feature,
    a chi-square test of the predicted-class mix, and the verdict (`not-enough-data`,
    `no-drift` or `drift`)."""
    worker = state.current()
    worker.log.flush()
    return worker.drift(fresh=True)


@blueprint.route("/policy")
@blueprint.response(200, schemas.Policy)
def retrain_policy():
    """The automatic retraining policy: its settings, what it counted, whether it is due,
    what it waits for and when it can fire next."""
    worker = state.current()
    return policy.status(worker.settings, worker.loop, worker.store, worker.drift)
