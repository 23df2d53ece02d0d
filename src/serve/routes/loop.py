"""The learning loop as the API shows it: input drift and the automatic retraining policy."""

from __future__ import annotations

from flask_smorest import Blueprint

from imgclf.loop import featuredrift, policy
from serve import drift_schemas, schemas, state

#: How old the test on the model's features may be before GET /drift measures it again
FEATURES_EVERY_S = 60.0
blueprint = Blueprint("loop", __name__, description="Drift and automatic retraining")


@blueprint.route("/drift")
@blueprint.response(200, drift_schemas.Drift)
def drift():
    """Production inputs against the training data: a Kolmogorov-Smirnov test per image
    statistic, a chi-square test of the predicted-class mix, a classifier two-sample test on
    the model's features of the latest kept images against the test images (`model_features`:
    AUC, p-value, drift only from an AUC of `auc_floor`), and the verdict (`not-enough-data`,
    `no-drift` or `drift`)."""
    worker = state.current()
    worker.log.flush()
    worker.keeper.flush()  # the images of the latest predictions, kept in the background
    settings = worker.settings
    featuredrift.refresh(
        worker.model.loaded,
        settings.data_dir,
        settings.models_dir,
        worker.loop.drift_window,
        every_s=FEATURES_EVERY_S,
    )
    return worker.drift(fresh=True)


@blueprint.route("/policy")
@blueprint.response(200, schemas.Policy)
def retrain_policy():
    """The automatic retraining policy: its settings, what it counted, whether it is due,
    what it waits for and when it can fire next."""
    worker = state.current()
    return policy.status(worker.settings, worker.loop, worker.store, worker.drift)
