#!/usr/bin/env bash
# Roost's whole test suite, the full tier: the function runtime's tests (Python, stdlib
# unittest), then every Rust test in the workspace (unit tests, and the integration tests
# against the real Envoy, Redis, nginx and Docker, which plain `cargo test` leaves out as
# ignored: `--include-ignored` runs them). Needs what scripts/install-deps.sh installs.
# Ends with one line counting every test run: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The runtime's tests need Starlette: the interpreter the process runtime would pick
# (ROOST_PYTHON, else python3, else Debian's /usr/bin/python3 when only that one has it).
python=${ROOST_PYTHON:-python3}
if [ -z "${ROOST_PYTHON:-}" ] && ! python3 -c 'import starlette' 2>/dev/null \
  && /usr/bin/python3 -c 'import starlette' 2>/dev/null; then
  python=/usr/bin/python3
fi
"$python" -m unittest discover -s faas-runtime/tests -t faas-runtime 2>&1 | tee -a "$log"
py=${PIPESTATUS[0]}
cargo test --workspace --locked -- --include-ignored 2>&1 | tee -a "$log"
rs=${PIPESTATUS[0]}

# unittest: "Ran N tests" then "OK" or "FAILED (failures=F, errors=E)"; cargo: "test result: ... N passed; M failed".
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed;/) s += $i } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed;/) s += $i } END { print s + 0 }' "$log")
py_ran=$(awk '/^Ran [0-9]+ tests?/ { s += $2 } END { print s + 0 }' "$log")
py_failed=$(grep -Eo 'FAILED \((failures|errors)=[0-9]+(, (failures|errors)=[0-9]+)?\)' "$log" | grep -Eo '[0-9]+' | awk '{ s += $1 } END { print s + 0 }')
passed=$((passed + py_ran - py_failed))
failed=$((failed + py_failed))
if [ "$py" -ne 0 ] || [ "$rs" -ne 0 ]; then
  [ "$failed" -gt 0 ] || failed=1
fi
echo "$passed passed, $failed failed"
[ "$py" -eq 0 ] && [ "$rs" -eq 0 ]
