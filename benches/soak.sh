#!/usr/bin/env bash
# Soak run (benches/soak.py): a release fxgate under a mixed load for FXGATE_SOAK_SECS
# (default 600); RSS, fds, threads and tokio tasks sampled every 10 s must stay flat after the
# warm-up. Exit 1 if they do not, or if a client saw a transport error.
#   bash benches/soak.sh                     # 10 minutes
#   FXGATE_SOAK_SECS=60 bash benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 benches/soak.py
