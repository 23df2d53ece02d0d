"""A small client of the REST API: the dashboard's only way to the model, the data and the jobs.

Every call has a timeout; failures become ``ApiError`` with a sentence a person can act on.
"""

from __future__ import annotations

from urllib.parse import quote

import requests

from imgclf.config import get_server_settings, get_service_settings


class ApiError(RuntimeError):
    """The API is down, slow, or refused the request; the message says which and why."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class ApiClient:
    """The REST API's calls; each raises ``ApiError`` (with the HTTP status, if any)."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout=10.0):
        if base_url is None or token is None:
            base_url = base_url or get_server_settings().api_url
            token = token if token is not None else get_service_settings().admin_token
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()

    def _call(
        self, method: str, path: str, admin: bool = False, timeout=None, raw=False, **kwargs
    ):
        """The answer's JSON body (``raw``: its bytes); ``ApiError`` for a refusal."""
        headers = kwargs.pop("headers", {})
        if admin:
            if not self.token:
                raise ApiError("this needs the admin token: enter it in the Retrain tab")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                headers=headers,
                timeout=timeout or self.timeout,
                **kwargs,
            )
        except requests.Timeout:
            raise ApiError(f"the API at {self.base_url} is not answering (timed out)") from None
        except requests.ConnectionError:
            raise ApiError(f"the API at {self.base_url} is down (connection refused)") from None
        if raw and response.status_code < 400:
            return response.content
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400 and not (response.status_code == 422 and "counts" in body):
            message = body.get("message") or response.reason
            raise ApiError(f"{message} (HTTP {response.status_code})", response.status_code, body)
        return body

    def health(self) -> dict:
        return self._call("GET", "/health", timeout=3)

    def predict(self, payload: bytes, filename: str = "image", explain: bool = False) -> dict:
        path = "/predict?explain=true" if explain else "/predict"
        return self._call("POST", path, files={"image": (filename, payload)})

    def feedback(self, prediction_id: str, label: str) -> dict:
        """The true label of a prediction; with the admin token its image becomes training data."""
        return self._call(
            "POST",
            "/feedback",
            admin=bool(self.token),
            json={"prediction_id": prediction_id, "label": label},
        )

    def review(self, limit: int = 12, order: str = "useful") -> dict:
        """The images most worth a label first (``order=useful``), or the least confident."""
        params = {"limit": limit, "order": order}
        return self._call("GET", "/review", admin=True, params=params, timeout=30)

    def drift(self) -> dict:
        return self._call("GET", "/drift", timeout=60)

    def policy(self) -> dict:
        return self._call("GET", "/policy", timeout=30)

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/retrain/{job_id}/cancel", admin=True, timeout=30)

    def upload_files(self, files: list[tuple[str, bytes]], label: str) -> dict:
        return self._call(
            "POST",
            "/upload-data",
            admin=True,
            data={"label": label},
            files=[("files", (name, content)) for name, content in files],
            timeout=120,
        )

    def upload_zip(self, name: str, content: bytes) -> dict:
        return self._call(
            "POST", "/upload-data", admin=True, files={"zip": (name, content)}, timeout=300
        )

    def data_summary(self) -> dict:
        return self._call("GET", "/data/summary")

    def uploads(self) -> dict:
        """Uploaded classes and batches with their counts (admin)."""
        return self._call("GET", "/uploads", admin=True, timeout=30)

    def delete_upload_batch(self, batch_id: str) -> dict:
        path = f"/uploads/batches/{quote(batch_id, safe='')}"
        return self._call("DELETE", path, admin=True, timeout=60)

    def delete_upload_class(self, name: str) -> dict:
        path = f"/uploads/classes/{quote(name, safe='')}"
        return self._call("DELETE", path, admin=True, timeout=60)

    def rename_upload_class(self, name: str, new_name: str) -> dict:
        path = f"/uploads/classes/{quote(name, safe='')}"
        return self._call("PATCH", path, admin=True, json={"name": new_name}, timeout=60)

    def upload_audit(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/uploads/audit", admin=True, params={"limit": limit})

    def data_issues(self, batch: str | None = None) -> dict:
        """What the audit of the data found (admin; ``batch``: one upload's)."""
        params = {"batch": batch} if batch else None
        return self._call("GET", "/data/issues", admin=True, params=params, timeout=30)

    def scan_data(self) -> dict:
        """Queue a scan of all the data (admin): the job, 409 with it while one is live."""
        return self._call("POST", "/data/issues/scan", admin=True, timeout=30)

    def upload_file_thumbnail(self, stored_as: str, size: int = 64) -> bytes:
        """One uploaded image (``uploads/<batch>/<class>/<file>``) as PNG bytes (admin)."""
        path = f"/uploads/files/{quote(stored_as, safe='/')}"
        return self._call("GET", path, admin=True, params={"size": size}, raw=True)

    def relabel_upload_file(self, stored_as: str, label: str) -> dict:
        path = f"/uploads/files/{quote(stored_as, safe='/')}"
        return self._call("PATCH", path, admin=True, json={"label": label}, timeout=60)

    def delete_upload_file(self, stored_as: str) -> dict:
        path = f"/uploads/files/{quote(stored_as, safe='/')}"
        return self._call("DELETE", path, admin=True, timeout=60)

    def samples(self, per_class: int = 6) -> dict:
        return self._call("GET", "/data/samples", params={"per_class": per_class})

    def brightness(self) -> dict:
        return self._call("GET", "/data/brightness", timeout=30)

    def retrain(self, parameters: dict) -> dict:
        return self._call("POST", "/retrain", admin=True, json=parameters)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/retrain/{job_id}")

    def jobs(self) -> list[dict]:
        return self._call("GET", "/jobs")

    def model(self) -> dict:
        return self._call("GET", "/model")

    def models(self) -> dict:
        return self._call("GET", "/models")

    def rollback(self) -> dict:
        return self._call("POST", "/model/rollback", admin=True)

    def stats(self) -> dict:
        return self._call("GET", "/stats")
