#!/usr/bin/env bash
# Recovery hook of the garage-generic example profile: exits 0 only when
# every node, asked itself, reports "healthy" in GetClusterHealth.
# Usage: recovered.sh ADMIN_TOKEN ADMIN_ADDR:PORT...
set -uo pipefail
token=$1; shift
status=0
for addr in "$@"; do
  body=$(curl -sS --max-time 3 -H "Authorization: Bearer $token" \
    "http://$addr/v2/GetClusterHealth" 2>&1) || { echo "admin $addr: $body"; status=1; continue; }
  if ! grep -q '"status": *"healthy"' <<<"$body"; then
    echo "admin $addr: $(tr -d '\n' <<<"$body" | cut -c1-200)"
    status=1
  fi
done
exit $status
