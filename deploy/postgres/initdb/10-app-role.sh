#!/bin/sh
# Run once by the official postgres image when the data directory is first created: the
# service's least-privilege role (deploy/postgres/app-role.sql), with its own password.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_role=confidence_app -v app_password="$FEEDBACK_DB_PASSWORD" -v db="$POSTGRES_DB" \
    -f /etc/confidence/app-role.sql
