"""The WSGI entry point gunicorn loads in each worker: ``serve.wsgi:app``."""

from serve.app import create_app

app = create_app()
