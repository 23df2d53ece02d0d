"""REST API (Flask + gunicorn): issue 3. It will build on imgclf.prediction.Predictor."""
