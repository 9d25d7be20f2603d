#!/usr/bin/env bash
# Bootstrap hook of the garage-generic example profile: connect the nodes,
# apply a layout, create the access key and the bucket.
# Usage: bootstrap.sh GARAGE_BIN NODE1_CONFIG NODE2_CONFIG ...
# Environment: FAULTLINE_S3_ACCESS_KEY_ID, FAULTLINE_S3_SECRET_ACCESS_KEY,
# FAULTLINE_S3_BUCKET (set by faultline for every hook).
set -euo pipefail
bin=$1; shift
first=$1

# Every step is retried for a bounded time: a node that just started may
# not answer its CLI yet.
retry() {
  local i
  for i in $(seq 1 60); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  echo "gave up after 60 tries: $*" >&2
  return 1
}

node_id() { "$bin" -c "$1" node id -q 2>/dev/null | grep '@'; }

ids=()
for cfg in "$@"; do
  id=""
  for _ in $(seq 1 60); do
    id=$(node_id "$cfg" || true)
    [ -n "$id" ] && break
    sleep 0.5
  done
  [ -n "$id" ] || { echo "no node id from $cfg" >&2; exit 1; }
  ids+=("$id")
done

for id in "${ids[@]:1}"; do
  retry "$bin" -c "$first" node connect "$id"
done
zone=1
for id in "${ids[@]}"; do
  retry "$bin" -c "$first" layout assign -z "z$zone" -c 1G "${id%%@*}"
  zone=$((zone + 1))
done
"$bin" -c "$first" layout apply --version 1
retry "$bin" -c "$first" key import --yes -n faultline \
  "$FAULTLINE_S3_ACCESS_KEY_ID" "$FAULTLINE_S3_SECRET_ACCESS_KEY"
retry "$bin" -c "$first" bucket create "$FAULTLINE_S3_BUCKET"
retry "$bin" -c "$first" bucket allow --read --write --owner \
  "$FAULTLINE_S3_BUCKET" --key "$FAULTLINE_S3_ACCESS_KEY_ID"
