#!/usr/bin/env bash
# Roost's benchmark suite, in one command: builds the release binaries, then runs
# roost-bench, which starts the real platform (processes, and containers when a Docker
# engine answers), measures it and the machine's floor, runs the component benchmarks,
# and writes the results into docs/benchmarks.md (between its roost-bench markers).
# Needs what scripts/install-deps.sh installs. Takes about 10 minutes on 2 cores; it is
# bounded in time and requests and talks only to loopback and Roost's own containers.
#
#   bash scripts/bench.sh                       # everything, written to docs/benchmarks.md
#   bash scripts/bench.sh --out -               # print only
#   bash scripts/bench.sh --runtimes process --rounds 10
#   bash scripts/bench.sh --help                # every option (also ROOST_BENCH_* variables)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins --examples
export ROOST_BENCH_COMMAND="bash scripts/bench.sh${*:+ $*}"
exec ./target/release/roost-bench "$@"
