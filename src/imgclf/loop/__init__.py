"""Loop: from new labelled data to a promoted model, and the jobs that run it.

``drift`` (are the inputs changing), ``policy`` (when to retrain by itself), ``jobs`` (a retrain
job: queued by the API, run by a worker with its heartbeat) and ``kernels`` (the notebook's
kernel), ``worker`` (claims and runs jobs), ``retention`` (images of recent predictions, kept so
that feedback can label them); the promotion gate: ``evidence`` (paired statistics),
``comparison`` (per-class and overall verdicts), ``gate`` (``GateThresholds``, the decision
and its reasons), ``promotion`` (register a candidate and decide), ``outcome`` (how a run
ended), ``labelcheck`` (an upload's label issues, by cleanlab on the model's features),
``registering`` (the registering run: reserve a version, run the notebook, settle the
pointer).
"""
