"""The REST API: Flask app factory (``serve.app``), schemas, metrics and gunicorn config."""
