#!/bin/sh
# First start: initdb with the password of POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD),
# create POSTGRES_DB; then the server, on every interface, password-checked over TCP.
set -eu
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password_file="${POSTGRES_PASSWORD_FILE:-}"
  if [ -z "$password_file" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD)" >&2; exit 1; }
    password_file=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
  fi
  initdb -D "$PGDATA" -U "$user" --pwfile="$password_file" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
  [ "$password_file" = "${POSTGRES_PASSWORD_FILE:-}" ] || rm -f "$password_file"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  [ "$database" = postgres ] || createdb -U "$user" "$database"
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "initialised $PGDATA: user $user, database $database"
fi
if [ "${1:-postgres}" = postgres ]; then
  shift 2>/dev/null || true
  exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
