#!/bin/sh
# One-shot job `temporal-admin-tools` of docker-compose.temporal.yml (image
# temporalio/admin-tools; BusyBox sh, so POSIX only). Creates Temporal's two databases and
# brings their schemas up to the versions shipped in this admin-tools image.
#
# Safe to run on every `docker compose up`: `create` ignores an existing database, setup-schema
# only adds the version tables, and update-schema applies just the missing versions. After a
# server upgrade (same tag for server and admin-tools) this job is what migrates the schema.
# Adapted from temporalio/samples-server compose/scripts/setup-postgres.sh.
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS (host of the Temporal Postgres) must be set}"
: "${POSTGRES_USER:?POSTGRES_USER must be set}"
: "${SQL_PASSWORD:?SQL_PASSWORD (read by temporal-sql-tool) must be set}"
PORT=${DB_PORT:-5432}
SCHEMA_DIR=/etc/temporal/schema/postgresql/v12

sql_tool() {
    temporal-sql-tool --plugin postgres12 --endpoint "$POSTGRES_SEEDS" --port "$PORT" \
        --user "$POSTGRES_USER" "$@"
}

for db in temporal temporal_visibility; do
    case $db in
        temporal) versioned=$SCHEMA_DIR/temporal/versioned ;;
        *) versioned=$SCHEMA_DIR/visibility/versioned ;;
    esac
    echo "setup-schema: $db"
    sql_tool --db "$db" create
    sql_tool --db "$db" setup-schema -v 0.0
    sql_tool --db "$db" update-schema -d "$versioned"
done
echo "setup-schema: done"
