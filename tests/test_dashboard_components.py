"""Dashboard components without a server: a stub client stands in for the API."""

from __future__ import annotations

from dashboard.client import ApiError
from dashboard.components import DataView, RetrainView
from dashboard.components.base import Notices
from dashboard.components.retrain import job_text


class StubClient:
    base_url, token = "http://api", "t"

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            answer = self.answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call


JOB = {
    "id": "abc",
    "state": "running",
    "progress": {"stage": "fine-tuning", "epoch": 2, "epochs": 5, "fraction": 0.42},
    "log_tail": ["epoch 2"],
}


def test_retrain_follows_the_running_job_when_the_api_answers_409():
    conflict = ApiError("retrain job abc is already running (HTTP 409)", 409, {"job": JOB})
    view = RetrainView(StubClient(retrain=conflict, job=JOB), Notices())
    view.on_retrain()
    assert view.job_id == "abc" and view.progress.value == 42
    assert "epoch 2/5" in view.job_text.object and not view.notices.alert.visible


def test_an_api_outage_shows_in_the_banner_and_the_view_keeps_its_content():
    down = ApiError("the API at http://api is down (connection refused)")
    notices = Notices()
    view = DataView(StubClient(data_summary=down), notices)
    view.refresh()
    assert notices.alert.visible and "down" in notices.alert.object
    assert view.distribution.objects == []


def test_job_text_shows_the_gate_decision_with_both_scores():
    finished = {
        **JOB,
        "state": "rejected",
        "report": "/reports/x/report.html",
        "result": {
            "reason": "worse",
            "metric": "f1_macro",
            "candidate": 0.9,
            "current": 0.95,
            "version": "v0003",
        },
    }
    text = job_text(finished, "http://api")
    assert "**REJECTED**" in text and "0.9000 against current 0.9500" in text
    assert "v0003" in text and "http://api/reports/x/report.html" in text
