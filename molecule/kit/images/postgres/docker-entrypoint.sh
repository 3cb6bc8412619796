#!/bin/sh
# Initialise PGDATA on first start (user, password from POSTGRES_PASSWORD_FILE, database), then
# run postgres as the postgres user. Arguments starting with "-" are passed to postgres.
set -eu
case "${1:-postgres}" in -*) set -- postgres "$@" ;; esac
[ "$1" = postgres ] || exec "$@"

as_postgres() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD_FILE:-}" ] || { echo "POSTGRES_PASSWORD_FILE is required" >&2; exit 1; }
  # The secret is readable by root only; initdb (as postgres) gets a private copy in tmpfs.
  pwfile=$(mktemp /tmp/pwfile.XXXXXX)
  cat "$POSTGRES_PASSWORD_FILE" >"$pwfile"
  [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
  # UTF8 like the official image (a SQL_ASCII database hands drivers bytes instead of text).
  as_postgres initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    as_postgres psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -q -c "CREATE DATABASE \"$db\""
    as_postgres pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
  fi
  echo "PostgreSQL initialised: user $user, database $db"
fi
exec_as() { if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else exec "$@"; fi; }
exec_as "$@"
