"""Dashboard components without a server: a stub client stands in for the API."""

from __future__ import annotations

import panel as pn

from dashboard.client import ApiError
from dashboard.components import DataView, RetrainView, ReviewView
from dashboard.components.curation import CurationView
from dashboard.components.insights import drift_frame
from dashboard.components.retrain import evidence_frame, job_text
from dashboard.state import DashboardState


class StubClient:
    base_url, token = "http://api", "t"

    def __init__(self, **answers):
        self.answers, self.calls, self.arguments = answers, [], []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            self.arguments.append((name, *args))
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
    view = RetrainView(DashboardState(StubClient(retrain=conflict, job=JOB)))
    view.on_retrain()
    assert view.job_id == "abc" and view.progress.value == 42
    assert "epoch 2/5" in view.job_text.object and not view.notices.alert.visible


def test_an_api_outage_shows_in_the_banner_and_the_view_keeps_its_content():
    down = ApiError("the API at http://api is down (connection refused)")
    view = DataView(DashboardState(StubClient(data_summary=down)))
    notices = view.notices
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


def test_the_cancel_button_cancels_the_followed_job_and_shows_it_cancelled():
    cancelled = {**JOB, "state": "cancelled", "error": "cancelled by request", "created_at": 0}
    client = StubClient(retrain=JOB, job=JOB, cancel=cancelled)
    view = RetrainView(DashboardState(client))
    view.on_retrain()
    assert view.cancel_button.visible
    client.answers.update(
        job=cancelled, jobs=[cancelled], models={"current": None, "versions": []}
    )
    client.answers["policy"] = {"enabled": False, "next": "never: the policy is off"}
    view.on_cancel()
    assert "cancel" in client.calls and view.job_id is None
    assert "**CANCELLED**: cancelled by request" in view.job_text.object
    assert not view.cancel_button.visible and "policy is off" in view.policy_text.object


def test_review_queue_labels_an_item_in_one_click_and_drops_it():
    item = {"id": "p1", "created_at": 0, "label": "3", "confidence": 0.41, "image": "data:x"}
    other = {**item, "id": "p2"}
    stored = {"correct": False, "training": {"status": "added", "split": "test"}}
    client = StubClient(review={"classes": ["3", "8"], "items": [item, other]}, feedback=stored)
    view = ReviewView(DashboardState(client))
    view.refresh()
    assert [row.name for row in view.items.objects] == ["p1", "p2"]
    buttons = view.items.objects[0][2].objects
    assert [b.label for b in buttons] == ["3", "8"] and buttons[0].color == "success"
    buttons[1].clicks += 1  # one click on "8"
    assert [row.name for row in view.items.objects] == ["p2"]
    assert "Labelled **8** (a correction)" in view.result.object
    assert "**test** share" in view.result.object


def test_insights_show_the_drift_verdict_and_one_row_per_test():
    test = {"statistic": 0.6, "p_value": 1e-9, "drift": True, "train_mean": 0.3}
    report = {
        "verdict": "drift",
        "message": "drift in brightness",
        "features": {"brightness": {**test, "production_mean": 0.1}},
        "predicted_classes": {"statistic": 2.0, "p_value": 0.4, "drift": False},
    }
    frame = drift_frame(report)
    assert list(frame["test"]) == ["brightness", "predicted classes"]
    assert list(frame["drift"]) == ["yes", ""]
    seen = {"auc": 0.77, "p_value": 4e-8, "drift": True, "auc_floor": 0.6}
    frame = drift_frame({**report, "model_features": {**seen, "production_count": 80}})
    assert frame["test"].iloc[-1].startswith("model's features (AUC, drift from 0.6)")
    assert list(frame.iloc[-1][["production", "statistic", "drift"]]) == [80, 0.77, "yes"]


LISTING = {
    "classes": [
        {"name": "junk", "images": 3, "train": 2, "test": 1, "batches": ["b1"]},
        {"name": "sevn", "images": 6, "train": 4, "test": 2, "batches": ["b1", "b2"]},
    ],
    "batches": [
        {
            "id": "b1",
            "stored_at": "2026-12-03T07:00:00+00:00",
            "images": 5,
            "train": 3,
            "test": 2,
            "classes": {"junk": {"images": 3}, "sevn": {"images": 2}},
        },
        {
            "id": "b2",
            "stored_at": "2026-12-03T08:00:00+00:00",
            "images": 4,
            "train": 3,
            "test": 1,
            "classes": {"sevn": {"images": 4}},
        },
    ],
}


def test_data_tab_lists_uploaded_classes_and_batches():
    entry = {"created_at": 0, "operation": "delete-class", "target": "junk", "outcome": "done"}
    entry.update(images=3, actor="1a2b3c4d", client="127.0.0.1")
    client = StubClient(
        data_summary={"train": {"1": 5}, "uploads": {}},
        uploads=LISTING,
        upload_audit=[entry],
        data_issues=NO_ISSUES,
    )
    view = DataView(DashboardState(client))
    view.refresh()
    assert "No label check has run yet" in view.issues.summary.object
    curation = view.curation
    assert list(curation.classes.value["class"]) == ["junk", "sevn"]
    assert list(curation.batches.value["stored"]) == [
        "2026-12-03 07:00:00 UTC",
        "2026-12-03 08:00:00 UTC",
    ]
    assert curation.batches.value["classes"][0] == "junk (3), sevn (2)"
    assert curation.class_select.options == ["junk", "sevn"]
    assert curation.batch_select.options == ["b1", "b2"]
    assert list(curation.audit.value["by"]) == ["1a2b3c4d @ 127.0.0.1"]


def test_a_class_is_deleted_only_after_the_second_click():
    deleted = {
        "operation": "delete-class",
        "target": "junk",
        "images": 3,
        "train": 2,
        "test": 1,
        "batches": ["b1"],
        "batches_removed": [],
    }
    client = StubClient(uploads=LISTING, upload_audit=[], delete_upload_class=deleted)
    view = CurationView(DashboardState(client))
    view.refresh()
    view.class_select.value = "junk"
    view.on_delete_class()
    assert "delete_upload_class" not in client.calls
    assert view.confirm_button.visible and "**junk**" in view.confirm_text.object
    view.on_cancel()  # changing one's mind: nothing happens
    view.confirm_button.clicks += 1
    assert "delete_upload_class" not in client.calls
    view.on_delete_class()
    view.confirm_button.clicks += 1
    assert client.calls.count("delete_upload_class") == 1 and not view.confirm_button.visible
    assert "Deleted class **junk**: 3 image(s) (2 train, 1 test)" in view.result.object


def test_a_rename_into_an_existing_class_says_merge_and_a_refusal_shows_in_the_banner():
    refused = ApiError("retrain job abc is running: ... (HTTP 409)", 409, {"job": JOB})
    client = StubClient(uploads=LISTING, upload_audit=[], rename_upload_class=refused)
    view = CurationView(DashboardState(client))
    view.refresh()
    view.class_select.value, view.new_name.value = "sevn", "junk"
    view.on_rename_class()
    assert view.confirm_text.object.startswith("Merge class **sevn** into **junk**")
    view.on_confirm()
    assert view.notices.alert.visible and "retrain job abc" in view.notices.alert.object
    view.new_name.value = ""
    view.on_rename_class()
    assert "type its new name" in view.result.object and not view.confirm_button.visible


def test_curation_asks_for_the_token_before_calling_the_api():
    client = StubClient(uploads=LISTING)
    client.token = ""
    view = CurationView(DashboardState(client))
    view.refresh()
    assert client.calls == [] and "admin token" in view.result.object


def test_a_finished_job_shows_the_gate_evidence_class_by_class():
    row = {
        "class": "3", "n": 36, "current_recall": 0.97, "candidate_recall": 0.5,
        "difference": -0.47, "ci_low": -0.64, "ci_high": -0.31, "p_value": 1e-5,
        "level": 0.0045, "verdict": "worse", "detectable_drop": 0.29,
    }  # fmt: skip
    overall = {
        "metric": "f1_macro", "current": 0.98, "candidate": 0.93, "difference": -0.05,
        "ci_low": -0.07, "ci_high": -0.03, "p_value": 0.0005, "level": 0.005, "verdict": "worse",
    }  # fmt: skip
    result = {
        "reason": "worse", "verdict": "worse", "version": "v0002", "candidate": 0.93,
        "current": 0.98, "outcome": {"decision": {"comparisons": [row], "overall": overall}},
    }  # fmt: skip
    rejected = {**JOB, "state": "rejected", "result": result}
    client = StubClient(health=None, job=rejected, jobs=[], policy=None, models=None)
    view = RetrainView(DashboardState(client))
    view.state.job_id = "abc"
    view.state.poll()
    assert view.evidence.visible and "gate verdict: **worse**" in view.job_text.object
    frame = view.evidence.value
    assert frame["class"].tolist() == ["3", "overall (f1_macro)"]
    assert (
        frame.loc[0, "95% interval"] == "-0.640 to -0.310" and frame.loc[0, "verdict"] == "worse"
    )
    assert frame.loc[0, "detectable drop"] == 0.29
    assert evidence_frame({}).empty  # before the gate ran: nothing to show
    settle = {**result, "inconclusive": {"1": "about 40 more test images of '1' would settle"}}
    client.answers["job"] = {**rejected, "result": settle}
    view.state.job_id = "abc"
    view.state.poll()
    assert "Not enough evidence for '1': about 40 more" in view.job_text.object


def dashboard(client):
    """The whole dashboard's tabs on a stub client (no server, no browser)."""
    from dashboard.app import Dashboard

    client.answers.setdefault("health", {"status": "ok", "model_version": "v1", "uptime_s": 5})
    return Dashboard(client)


def test_one_poll_asks_the_api_once_whatever_the_tabs():
    client = StubClient()
    board = dashboard(client)
    board.state.poll()
    assert client.calls == ["health"]  # six tabs, one question
    assert "API: **ok**" in board.status.object and "**v1**" in board.status.object


def test_a_poll_follows_the_started_job_and_the_monitor_only_while_it_is_shown():
    stats = {"uptime_s": 60, "model_version": "v1", "series": {"points": []}, "by_class": {}}
    client = StubClient(retrain=JOB, job=JOB, stats=stats, model={"test_metrics": {}})
    board = dashboard(client)
    board.retrain.on_retrain()
    client.calls.clear()
    board.state.poll()
    assert client.calls == ["health", "job"]
    assert board.retrain.progress.value == 42
    board.state.monitoring = True
    client.calls.clear()
    board.state.poll()
    assert client.calls == ["health", "job", "stats", "model"]
    monitor = next(view for view in board.views if view.title == "Monitor")
    assert monitor.cards.objects  # bound to the state's stats: drawn without a call of its own


def test_the_token_typed_once_reaches_the_client_and_every_tab():
    client = StubClient(uploads=LISTING, upload_audit=[], review={"classes": [], "items": []})
    client.token = ""
    board = dashboard(client)
    curation = next(view for view in board.views if view.title == "Data").curation
    curation.refresh()
    assert "admin token" in curation.result.object and "uploads" not in client.calls
    board.retrain.token_input.value = "typed-token"
    assert board.state.token == "typed-token" and client.token == "typed-token"
    curation.refresh()
    assert "uploads" in client.calls


# ------------------------------------------------------------------ issues found in the data
NO_ISSUES = {
    "state": "done",
    "model_version": None,
    "computed_at": None,
    "notes": [],
    "label_issues": [],
    "outliers": [],
    "leaks": [],
    "near_duplicates": [],
    "scan": None,
}
UPLOADED = "uploads/b1/8/3f2a.png"
ISSUES = {
    **NO_ISSUES,
    "model_version": "v0001",
    "computed_at": "2026-12-03T07:00:00+00:00",
    "notes": ["class 'junk' is not in the training data: not judged"],
    "label_issues": [
        {"batch": "b1", "file": "three.png", "stored_as": UPLOADED, "label": "8",
         "suggested_label": "3", "score": 0.02},
        {"batch": None, "file": "d1.png", "stored_as": "train/7/d1.png", "label": "7",
         "suggested_label": "1", "score": 0.1},
    ],
    "outliers": [{"batch": "b1", "file": "noise.png", "stored_as": "uploads/b1/8/9e1c.png",
                  "label": "8", "unknown_score": 3.2}],
    "leaks": [{"batch": "b1", "file": "t.png", "label": "4", "test_file": "test/4/x.png",
               "similarity": 0.9951}],
    "near_duplicates": [
        {"batch": "b1", "file": "twin.png", "label": "0", "stored_as": "uploads/b1/0/77aa.png",
         "duplicate_of": "train/6/y.png", "duplicate_label": "6", "conflict": True,
         "similarity": 0.997},
        {"batch": "b1", "file": "same.png", "label": "5", "stored_as": "uploads/b1/5/88bb.png",
         "duplicate_of": "train/5/z.png", "duplicate_label": "5", "conflict": False,
         "similarity": 0.998},
    ],
}  # fmt: skip
RELABELLED = {
    "operation": "relabel-file", "target": UPLOADED, "new_name": "3", "images": 1, "train": 1,
    "test": 0, "batches": ["b1"], "batches_removed": [], "stored_as": "uploads/b1/3/3f2a.png",
}  # fmt: skip


def buttons(row) -> dict:
    """The buttons of a row of the issues by label."""
    return {button.label: button for button in row.select(pn.widgets.Button)}


def issues_view(**answers):
    from dashboard.components.issues import IssuesView

    answers = {"data_issues": ISSUES, "upload_file_thumbnail": b"\x89PNG", **answers}
    client = StubClient(**answers)
    return IssuesView(DashboardState(client)), client


def test_the_issues_list_each_upload_with_its_thumbnail_and_leaks_read_only():
    view, client = issues_view()
    view.refresh()
    assert "model **v0001** 2026-12-03 07:00:00 UTC" in view.summary.object
    assert "2 label issue(s), 1 outlier(s), 1 near-duplicate(s) under another" in (
        view.summary.object
    )
    assert "_class 'junk' is not in the training data" in view.summary.object
    [issue] = view.label_issues.objects  # the data/train one goes to the read-only table
    assert issue.name == UPLOADED and "data:image/png;base64,iVBORw==" in issue[0].object
    assert "given **8** · suggested **3** · score 0.020" in issue[1].object
    assert set(buttons(issue)) == {"Accept '3'", "Relabel", "Delete"}
    [outlier] = view.outliers.objects
    assert set(buttons(outlier)) == {"Relabel", "Delete"}  # no suggestion to accept
    [conflict] = view.conflicts.objects  # the near-duplicate under the same label is no issue
    assert "Accept '6'" in buttons(conflict) and "<code>train/6/y.png</code>" in conflict[1].object
    assert view.training.value.to_dict("records") == [
        {"image": "train/7/d1.png", "label": "7", "suggested label": "1", "score": 0.1}
    ]
    assert list(view.leaks.value["test file"]) == ["test/4/x.png"]
    thumbnails = [args for args in client.arguments if args[0] == "upload_file_thumbnail"]
    assert [args[1] for args in thumbnails] == [UPLOADED, "uploads/b1/8/9e1c.png"] + [
        "uploads/b1/0/77aa.png"
    ]
    view.refresh()  # thumbnails are kept: an uploaded image's name is its content's hash
    assert client.calls.count("upload_file_thumbnail") == 3


def test_a_suggestion_is_accepted_only_after_the_confirmation_then_the_list_reloads():
    view, client = issues_view(relabel_upload_file=RELABELLED)
    view.refresh()
    buttons(view.label_issues.objects[0])["Accept '3'"].clicks += 1
    assert "relabel_upload_file" not in client.calls
    assert "from **8** to **3** (the suggestion)?" in view.confirmation.text.object
    view.confirmation.cancel_button.clicks += 1  # changing one's mind: nothing happens
    view.confirmation.button.clicks += 1
    assert "relabel_upload_file" not in client.calls
    buttons(view.label_issues.objects[0])["Accept '3'"].clicks += 1
    client.answers["data_issues"] = {**ISSUES, "label_issues": ISSUES["label_issues"][1:]}
    view.confirmation.button.clicks += 1
    assert ("relabel_upload_file", UPLOADED, "3") in client.arguments
    assert f"Relabelled `{UPLOADED}` as **3**: 1 image(s) (1 train, 0 test)" in (
        view.result.object
    )
    assert client.calls.count("data_issues") == 2  # reloaded: the issue has left the list
    assert [row.object for row in view.label_issues.objects] == ["None."]


def test_an_outlier_is_relabelled_to_the_chosen_class_or_deleted_and_a_409_shows():
    refused = ApiError("retrain job abc is running: ... (HTTP 409)", 409, {"job": JOB})
    view, client = issues_view(relabel_upload_file=refused, delete_upload_file=RELABELLED)
    view.classes = ["3", "8", "junk"]
    view.refresh()
    [outlier] = view.outliers.objects
    menu = outlier.select(pn.widgets.Select)[0]
    assert menu.options == ["3", "junk"]  # not the label it has
    menu.value = "junk"
    buttons(outlier)["Relabel"].clicks += 1
    assert "from **8** to **junk**?" in view.confirmation.text.object
    view.confirmation.button.clicks += 1
    assert ("relabel_upload_file", "uploads/b1/8/9e1c.png", "junk") in client.arguments
    assert view.notices.alert.visible and "retrain job abc" in view.notices.alert.object
    assert client.calls.count("data_issues") == 1  # refused: nothing to reload
    buttons(outlier)["Delete"].clicks += 1
    asked = view.confirmation.text.object
    assert asked.startswith("Delete <code>noise.png</code> (batch <code>b1</code>")
    view.confirmation.button.clicks += 1
    assert ("delete_upload_file", "uploads/b1/8/9e1c.png") in client.arguments


def test_the_issues_ask_for_the_token_before_calling_the_api():
    view, client = issues_view()
    view.state.token = ""
    view.refresh()
    assert client.calls == [] and "admin token" in view.summary.object


def test_a_scan_is_followed_by_the_poll_and_its_findings_shown_when_it_ends():
    queued = {"id": "s1", "state": "queued", "progress": {}}
    done = {"id": "s1", "state": "done", "progress": {"stage": "done"}}
    view, client = issues_view(scan_data=queued, job=queued, health=None)
    view.scan_button.clicks += 1
    assert view.state.scan_id == "s1" and "Scan `s1`: **queued**" in view.scan_status.object
    view.state.poll()
    assert client.calls == ["scan_data", "health", "job"] and "data_issues" not in client.calls
    client.answers["job"] = done
    view.state.poll()
    assert "**done**" in view.scan_status.object and view.state.scan_id is None
    assert "data_issues" in client.calls  # the findings, once, when it ended
    client.calls.clear()
    view.state.poll()
    assert client.calls == ["health"]


def test_a_scan_while_one_runs_follows_that_one_and_a_refusal_shows_in_the_banner():
    running = {"id": "s2", "state": "running", "progress": {"stage": "training set"}}
    live = ApiError("a scan is already running; wait for it (HTTP 409)", 409, {"job": running})
    view, client = issues_view(scan_data=live)
    view.on_scan()
    assert view.state.scan_id == "s2" and "**running** · training set" in view.scan_status.object
    assert not view.notices.alert.visible
    client.answers["scan_data"] = ApiError("no model is served (HTTP 409)", 409, {"job": None})
    view.state.scan_id = None
    view.on_scan()
    assert view.notices.alert.visible and "no model" in view.notices.alert.object
    view.refresh()  # a scan found live by a reload is followed too
    client.answers["data_issues"] = {**ISSUES, "state": "running", "scan": running}
    view.refresh()
    assert view.state.scan_id == "s2" and "is **running**" in view.summary.object


def test_a_hostile_upload_name_is_shown_as_text_not_markup():
    from dashboard.components.issues import code, shown

    name = "a`<img src=x onerror=alert(1)>`*b*.png"
    for made in (shown(name), code(name)):
        assert "<img" not in made and "`" not in made and "*" not in made, made
    from markdown_it import MarkdownIt  # Panel's Markdown renderer, HTML allowed

    rendered = MarkdownIt("commonmark").render(code(name))
    assert "<img" not in rendered and "&lt;img" in rendered, rendered
