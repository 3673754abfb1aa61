#!/usr/bin/env bash
# Entrypoint of the offline postgres image: the official postgres image's start-up contract on
# Debian's PostgreSQL, so docker-compose.yml's postgres service works unchanged.
#   - started as root: gives PGDATA to postgres and re-runs itself as postgres (started as
#     another user, e.g. compose `user: postgres`, it runs as that user);
#   - an empty PGDATA: initdb with POSTGRES_USER (default postgres) as superuser and
#     POSTGRES_PASSWORD (or *_FILE, a mounted secret), creates POSTGRES_DB, runs
#     /docker-entrypoint-initdb.d/*.sql and *.sh against it on a socket-only server;
#   - then `postgres`, listening on every address; TCP clients need the password
#     (scram-sha-256), local socket clients (pg_isready, docker exec psql) are trusted.
set -Eeuo pipefail

# VAR from VAR or from the file named by VAR_FILE, else the default.
file_env() {
    local var=$1 file_var="${1}_FILE" default=${2:-}
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo "both $var and $file_var are set" >&2
        exit 1
    fi
    local value=${!var:-$default}
    if [ -n "${!file_var:-}" ]; then
        value=$(<"${!file_var}")
    fi
    export "$var"="$value"
    unset "$file_var"
}

init_database() {
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    if [ -z "$POSTGRES_PASSWORD" ]; then
        echo "POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is required to initialise the database" >&2
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    # Socket only while initialising: nobody can connect over TCP to a half-made database.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    local psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    local script
    shopt -s nullglob
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) "${psql[@]}" --dbname "$POSTGRES_DB" -f "$script" ;;
            *.sh) if [ -x "$script" ]; then "$script"; else . "$script"; fi ;;
            *) echo "ignoring $script" >&2 ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
}

if [ "${1:-}" = postgres ]; then
    if [ "$(id -u)" = 0 ]; then
        # A new volume is handed to postgres; one it already owns is left alone, so a hardened
        # container (capabilities dropped but SETUID/SETGID) needs no CAP_CHOWN or DAC_*.
        mkdir -p "$PGDATA"
        if [ "$(stat -c %u "$PGDATA")" != "$(id -u postgres)" ]; then
            chown -R postgres:postgres "$PGDATA"
        fi
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
    fi
    # Started as another user (compose `user:`): it must own PGDATA already.
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        init_database
    fi
fi
exec "$@"
