#!/bin/sh
# The container's entry point: migrate the database once, then run one role.
#   api        gunicorn (the REST API)      worker     imgclf worker (retrain jobs)
#   dashboard  the Panel dashboard          upgrade    only migrate the database
# A worker that finds no current model (a new stack) first writes the default data set, unless
# DATA_DIR has one, and trains the first model, as `make model` does (FIRST_MODEL=0: not).
set -e
role="${1:-api}"
# a child in the background, waited for: this shell is PID 1, which ignores a SIGTERM it does
# not trap, so a stop would otherwise wait out the whole grace period
child=""
trap '[ -z "$child" ] || kill -TERM "$child" 2>/dev/null; exit 143' TERM INT
in_background() { "$@" & child=$!; wait "$child"; status=$?; child=""; return $status; }
case "$role" in
  api)
    imgclf db upgrade
    exec python -m gunicorn -c python:serve.gunicorn_conf ;;
  worker)
    imgclf db upgrade
    if [ "${FIRST_MODEL:-1}" = 1 ] && [ -z "$(python -c 'from imgclf import config; from imgclf.model import registry; print(registry.current_version(config.get_settings().models_dir) or "")')" ]; then
      [ -d "$DATA_DIR/train" ] || in_background imgclf data
      echo "no current model: training the first one (FIRST_MODEL=0 skips this)"
      in_background imgclf run train \
        || echo "the first model failed to train: see the report"
    fi
    exec imgclf worker ;;
  dashboard)
    exec python -m dashboard ;;
  upgrade)
    exec imgclf db upgrade ;;
  *)
    exec "$@" ;;
esac
