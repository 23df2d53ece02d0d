"""REST API (Flask + gunicorn): planned in issue 3; the predictor it will use is imgclf.prediction."""
