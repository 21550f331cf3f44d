#!/usr/bin/env bash
# Roost's fault-injection suite (issue 13): runs cli/tests/faults.rs against
# `docker compose up` (offline images, a project of its own, under the compose lock),
# prints each case as it runs, and writes the resulting table into docs/faults.md
# between its markers, with the machine, the commit and the command.
#
#   bash scripts/faults.sh                 # every case, ~6 minutes on 2 cores
#   <cases variable>=redis-kill,gate-kill bash scripts/faults.sh
#
# The variable that picks cases and the one naming a control-token file are described in
# docs/faults.md. Exits with the test's status (non-zero when a target was missed); the
# table is recorded either way.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
block=$(mktemp)
trap 'rm -f "$log" "$block"' EXIT

cmd=(cargo test -p roost-cli --locked --test faults -- --include-ignored --exact every_fault_is_survived_under_load --nocapture)
flock /tmp/roost-compose.lock "${cmd[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

begin='<!-- faults:table:begin -->'
end='<!-- faults:table:end -->'
table=$(sed -n "/^$begin\$/,/^$end\$/p" "$log" | sed '1d;$d')
if [ -z "$table" ]; then
  echo "faults.sh: the suite printed no table (exit $rc); docs/faults.md left as it was" >&2
  exit "$rc"
fi
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- . ':!docs/faults.md' 2>/dev/null || commit="$commit (with uncommitted changes)"
cases=$(sed -n 's/^faults: cases: //p' "$log" | head -n1)
{
  echo "$begin"
  echo "Recorded $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -sm), $(nproc) cores," \
    "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(docker --version | sed 's/,.*//');" \
    "commit $commit; \`bash scripts/faults.sh\`, cases: ${cases:-?}; exit status $rc."
  echo
  echo "$table"
  grep -E '^faults: [0-9]+ cases in' "$log" | sed 's/^faults: /\n/'
  echo "$end"
} >"$block"
if grep -qx "$begin" docs/faults.md && grep -qx "$end" docs/faults.md; then
  awk -v begin="$begin" -v end="$end" -v file="$block" '
    $0 == begin { while ((getline line < file) > 0) print line; skip = 1; next }
    $0 == end { skip = 0; next }
    !skip { print }' docs/faults.md >docs/faults.md.new && mv docs/faults.md.new docs/faults.md
else
  { echo; cat "$block"; } >>docs/faults.md
fi
echo "faults.sh: table written to docs/faults.md (exit $rc)" >&2
exit "$rc"
