#!/bin/sh
# One-shot job `temporal-create-namespace` of docker-compose.temporal.yml (image
# temporalio/admin-tools, whose /bin/sh is BusyBox ash, so this stays POSIX sh).
#
# Waits until the Temporal cluster is healthy, creates the namespace with its retention if it
# is missing, then registers Switchboard's custom search attributes as Keyword. Running it again
# changes nothing: an existing namespace keeps its settings and existing attributes are skipped.
# Adapted from temporalio/samples-server compose/scripts/create-namespace.sh.
set -eu

ADDRESS=${TEMPORAL_ADDRESS:-temporal:7233}
NAMESPACE=${NAMESPACE:-default}
# How long closed workflows are kept: also how long REJECT_DUPLICATE refuses a reused webhook id.
RETENTION=${NAMESPACE_RETENTION:-7d}
ATTEMPTS=${WAIT_ATTEMPTS:-60}
PAUSE=${WAIT_SECONDS:-5}
# Must name exactly core.contracts.SEARCH_ATTRIBUTES (tests/test_compose.py checks it).
SEARCH_ATTRIBUTES="PartnerId MerchantId EntityId EventType WebhookId EscrowId"

log() {
    echo "create-namespace: $*"
}

# retry WHAT COMMAND [ARG...]: run COMMAND until it succeeds, at most $ATTEMPTS times.
retry() {
    what=$1
    shift
    attempt=1
    until "$@"; do
        if [ "$attempt" -ge "$ATTEMPTS" ]; then
            log "giving up on $what after $ATTEMPTS attempts" >&2
            return 1
        fi
        log "waiting for $what (attempt $attempt/$ATTEMPTS)"
        attempt=$((attempt + 1))
        sleep "$PAUSE"
    done
}

cluster_healthy() {
    temporal operator cluster health --address "$ADDRESS" >/dev/null 2>&1
}

# Succeeds once the namespace exists; creates it when it does not. A create that loses a race
# fails with "already exists", and the next attempt's describe succeeds.
namespace_exists() {
    if temporal operator namespace describe --address "$ADDRESS" --namespace "$NAMESPACE" \
        >/dev/null 2>&1; then
        return 0
    fi
    log "creating namespace $NAMESPACE with retention $RETENTION"
    temporal operator namespace create --address "$ADDRESS" --namespace "$NAMESPACE" \
        --retention "$RETENTION"
}

# search_attribute_registered NAME: create NAME as Keyword; "already exists" counts as success,
# an existing attribute of another type stops the job (it cannot fix itself by retrying).
search_attribute_registered() {
    if output=$(temporal operator search-attribute create --address "$ADDRESS" \
        --namespace "$NAMESPACE" --name "$1" --type Keyword 2>&1); then
        log "search attribute $1 (Keyword) registered"
        return 0
    fi
    case $output in
        *"different type"*)
            log "search attribute $1 exists with a type other than Keyword: $output" >&2
            exit 1
            ;;
        *"already exists"*)
            log "search attribute $1 already registered"
            return 0
            ;;
    esac
    log "search attribute $1 not registered yet: $output" >&2
    return 1
}

# Succeeds once the frontend lists every attribute as Keyword (its caches have caught up).
search_attributes_listed() {
    listing=$(temporal operator search-attribute list --address "$ADDRESS" \
        --namespace "$NAMESPACE" 2>&1) || return 1
    for name in $SEARCH_ATTRIBUTES; do
        printf '%s\n' "$listing" | grep -Eq "^[[:space:]]*$name[[:space:]]+Keyword[[:space:]]*\$" ||
            return 1
    done
}

retry "the Temporal cluster at $ADDRESS" cluster_healthy
retry "namespace $NAMESPACE" namespace_exists
for name in $SEARCH_ATTRIBUTES; do
    retry "search attribute $name" search_attribute_registered "$name"
done
retry "search attributes to be listed" search_attributes_listed
log "namespace $NAMESPACE is ready with search attributes: $SEARCH_ATTRIBUTES"
