#!/usr/bin/env bash
# A local PostgreSQL for the MLflow server and the service's job store (tests and `make postgres`): Debian's
# package, installed when missing, its default cluster started on 127.0.0.1:5432, and a `layert2v` role that may
# create databases (each test makes its own). Idempotent; prints the URL, and only the URL, to stdout.
set -euo pipefail
PG_USER=${PG_USER:-layert2v}
PG_PASSWORD=${PG_PASSWORD:-layert2v}

if ! command -v pg_lsclusters > /dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null
fi
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -1)
if [ "$status" != "online" ]; then
  pg_ctlcluster "$version" "$cluster" start >&2  # its messages are not the URL this prints
fi
as_postgres() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
if [ "$(as_postgres "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
  as_postgres "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" > /dev/null
fi
echo "postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$port"
