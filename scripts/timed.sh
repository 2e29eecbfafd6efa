#!/usr/bin/env bash
# timed.sh NAME COMMAND...: run a step and say how long it took (also when it fails).
set -uo pipefail
name="$1"
shift
start=$(date +%s.%N)
"$@"
status=$?
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "$status" -eq 0 ]; then
    echo "step: $name took ${elapsed}s"
else
    echo "step: $name failed after ${elapsed}s (exit $status)" >&2
fi
exit "$status"
