#!/usr/bin/env bash
# One command for the side-by-side benchmark: installs nginx-light when missing (Debian), then
# runs `cargo bench --bench e2e` (direct vs nginx vs fxgate on loopback) and prints Markdown.
#   bash benches/run.sh            # FXGATE_BENCH_SECS=5 per workload by default
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
  # The package may start its own nginx on port 80; the benchmark runs its own.
  pkill -x nginx 2>/dev/null || true
fi
cargo bench --bench e2e
