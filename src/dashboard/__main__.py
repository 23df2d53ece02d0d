"""``python -m dashboard``: serve the dashboard at ``http://HOST:DASHBOARD_PORT/app``."""

from __future__ import annotations

import signal
import sys

import panel as pn

from dashboard.app import create_app
from imgclf.config import ConfigError, ServerSettings, get_server_settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def login(server: ServerSettings) -> dict:
    """Panel's basic-auth login for ``pn.serve``: the dashboard holds the admin token, so
    beyond the loopback nobody reaches it without ``DASHBOARD_PASSWORD`` (and a cookie secret).

    Raises:
        ConfigError: listening beyond the loopback without a password or a cookie secret.
    """
    if server.dashboard_password:
        if not server.dashboard_cookie_secret:
            raise ConfigError("DASHBOARD_PASSWORD needs DASHBOARD_COOKIE_SECRET (a random string)")
        return {
            "basic_auth": server.dashboard_password,
            "cookie_secret": server.dashboard_cookie_secret,
        }
    if server.host not in LOOPBACK:
        raise ConfigError(
            f"the dashboard would listen on {server.host} without a login: set "
            "DASHBOARD_PASSWORD and DASHBOARD_COOKIE_SECRET (it acts with the admin token)"
        )
    return {}


def main() -> None:
    server = get_server_settings()
    hosts = (server.host, "localhost", "127.0.0.1")
    origins = [f"{host}:{server.dashboard_port}" for host in hosts] + list(
        server.dashboard_origins
    )
    # SIGTERM (a container stopping): leave at once; as a container's PID 1 it would be ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pn.serve(
        {"app": create_app},
        port=server.dashboard_port,
        address=server.host,
        allow_websocket_origin=origins,
        show=False,
        title="imgclf dashboard",
        **login(server),
    )


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
