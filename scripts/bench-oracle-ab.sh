#!/usr/bin/env bash
# Compares `faultline bench oracle` of several builds on a machine whose
# speed drifts: runs each build in turn, RUNS rounds, and prints each one's
# best (minimum) and every check time in seconds.
#   scripts/bench-oracle-ab.sh OPS KEYS RUNS BINARY...
# e.g. scripts/bench-oracle-ab.sh 10000000 100000 3 /tmp/old ./target/release/faultline
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n 2,6p "$0" >&2
    exit 2
fi
ops=$1 keys=$2 runs=$3
shift 3
for _ in $(seq "$runs"); do
    for b in "$@"; do
        t=$("$b" bench oracle --ops "$ops" --keys "$keys" | sed -n 's/^check: *\([0-9.]*\) s.*/\1/p')
        echo "$b $t"
    done
done | awk '{ if (!($1 in m) || $2 < m[$1]) m[$1] = $2; s[$1] = s[$1] " " $2 }
            END { for (b in m) print b, "best", m[b], "all", s[b] }'
