#!/bin/sh
# The container's entry point: migrate the database once, then run one role.
#   api        gunicorn (the REST API)      worker     imgclf worker (retrain jobs)
#   dashboard  the Panel dashboard          upgrade    only migrate the database
set -e
role="${1:-api}"
case "$role" in
  api)
    imgclf db upgrade
    exec python -m gunicorn -c python:serve.gunicorn_conf ;;
  worker)
    imgclf db upgrade
    exec imgclf worker ;;
  dashboard)
    exec python -m dashboard ;;
  upgrade)
    exec imgclf db upgrade ;;
  *)
    exec "$@" ;;
esac
