"""The API's routes, one flask-smorest blueprint per module, registered by ``create_app``."""

from serve.routes import data, loop, models, predict, retrain, service, uploadfiles, uploads

BLUEPRINTS = (service.blueprint, predict.blueprint, data.blueprint, retrain.blueprint)
BLUEPRINTS += (models.blueprint, loop.blueprint, uploads.blueprint, uploadfiles.blueprint)
