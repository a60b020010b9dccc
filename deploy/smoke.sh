#!/usr/bin/env bash
# Smoke test of the monitoring path: starts fxgate on the built-in sandbox and a real
# Prometheus server on loopback, waits for a successful scrape, and queries fxgate metrics
# back through Prometheus' HTTP API (with the alert rules loaded). Bounded: 60 s at most.
# Needs: prometheus (Debian: apt-get install -y prometheus), curl, python3, cargo.
#   bash deploy/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v prometheus >/dev/null || { echo "smoke: install prometheus first (apt-get install -y prometheus)" >&2; exit 2; }

cargo build --quiet --bin fxgate
bin="${CARGO_TARGET_DIR:-target}/debug/fxgate"
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

FXGATE__SERVER__LISTEN=127.0.0.1:0 FXGATE__SERVER__ADMIN_LISTEN=127.0.0.1:0 \
  "$bin" serve --config config/fxgate.toml >"$work/fxgate.out" 2>"$work/fxgate.log" &
for _ in $(seq 1 300); do grep -q listening "$work/fxgate.out" 2>/dev/null && break; sleep 0.1; done
if ! grep -q listening "$work/fxgate.out"; then
  echo "smoke: FAILED, fxgate did not start:" >&2
  cat "$work/fxgate.log" >&2
  exit 1
fi
listen=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["listen"])' "$work/fxgate.out")
admin=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["admin"])' "$work/fxgate.out")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# One upload, so the request series exist too.
printf '\xff\xd8\xff\xe0smoke test image' >"$work/test.jpg"
curl -fsS -F "media=@$work/test.jpg" -H "Authorization: Bearer fxgate-demo-key" "http://$listen/media/upload/message"
echo

cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: fxgate
    static_configs: [{targets: ["$admin"]}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &

query() { curl -fsS --get "http://127.0.0.1:$port/api/v1/query" --data-urlencode "query=$1" 2>/dev/null || true; }
deadline=$((SECONDS + 60))
# rate() needs two scrapes of the upload's counter, as the dashboard's panels do.
until query 'rate(fxgate_requests_total{status="200"}[1m])' | grep -q '"value"'; do
  if (( SECONDS > deadline )); then
    echo "smoke: FAILED, Prometheus never scraped fxgate" >&2
    tail -20 "$work/prometheus.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "smoke: up            $(query 'up{job="fxgate"}')"
echo "smoke: requests      $(query 'fxgate_requests_total')"
echo "smoke: token valid   $(query 'fxgate_token_valid')"
# The exposition itself, by Prometheus' own linter (names, units, _total on counters).
curl -fsS "http://$admin/metrics" | promtool check metrics
echo "smoke: promtool check metrics: clean"
# Every dashboard query, as Grafana would send it for job=fxgate and every instance, corp and
# caller: it must
# parse and evaluate, and the ones about traffic that just happened must have data.
python3 - "$port" <<'PY'
import json, sys, urllib.parse, urllib.request
port = sys.argv[1]
d = json.load(open("deploy/grafana/fxgate.json"))
empty, n = [], 0
for panel in d["panels"]:
    for t in panel["targets"]:
        q = t["expr"].replace("$job", "fxgate").replace("$instance", ".*")
        q = q.replace("$corp", ".*").replace("$client", ".*")
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            ans = json.load(urllib.request.urlopen(url))
        except Exception as e:
            sys.exit(f"smoke: FAILED, dashboard panel {panel['title']!r}: {q}: {e}")
        if ans.get("status") != "success":
            sys.exit(f"smoke: FAILED, dashboard panel {panel['title']!r}: {ans}")
        n += 1
        if not ans["data"]["result"]:
            empty.append(panel["title"])
for must in ("Uploads/s by route and status", "Token age (expires at 7200 s)", "Process memory",
             "CPU used (cores)", "Requests/s by caller", "Latency p95 by caller (2xx)"):
    if must in empty:
        sys.exit(f"smoke: FAILED, dashboard panel {must!r} has no data after an upload")
# Each variable's label_values(selector, label) as Grafana asks it: the series API, which must
# list at least one value (a variable with no value empties every panel it filters).
import re
for v in d["templating"]["list"]:
    if v["type"] != "query":
        continue
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"]["query"])
    selector = m.group(1).replace("$job", "fxgate")
    url = f"http://127.0.0.1:{port}/api/v1/series?" + urllib.parse.urlencode({"match[]": selector})
    values = {x.get(m.group(2)) for x in json.load(urllib.request.urlopen(url))["data"]} - {None}
    if not values:
        sys.exit(f"smoke: FAILED, dashboard variable {v['name']!r} has no value: {selector}")
    print(f"smoke: variable {v['name']}: {sorted(values)}")
print(f"smoke: {n} dashboard queries evaluate ({len(set(empty))} panels empty so far: no such traffic yet)")
PY
rules=$(curl -fsS "http://127.0.0.1:$port/api/v1/rules")
echo "$rules" | grep -q FxgateNoValidToken || { echo "smoke: FAILED, alert rules not loaded" >&2; exit 1; }
echo "smoke: OK — Prometheus scraped fxgate and loaded $(echo "$rules" | grep -o '"name":"Fxgate[A-Za-z0-9]*"' | wc -l) alert rules"
