"""``python -m dashboard``: serve the dashboard at ``http://HOST:DASHBOARD_PORT/app``."""

from __future__ import annotations

import panel as pn

from dashboard.app import create_app
from imgclf.config import get_server_settings


def main() -> None:
    server = get_server_settings()
    origins = [f"{host}:{server.dashboard_port}" for host in (server.host, "localhost")]
    pn.serve(
        {"app": create_app},
        port=server.dashboard_port,
        address=server.host,
        allow_websocket_origin=origins,
        show=False,
        title="imgclf dashboard",
    )


if __name__ == "__main__":
    main()
