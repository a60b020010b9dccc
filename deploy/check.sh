#!/usr/bin/env bash
# Static checks of deploy/: alert rules (promtool), every Kubernetes overlay rendered and
# validated (k8s/check.sh), compose YAML, dashboard JSON.
# (Which metrics they name is checked against a live scrape by tests/observability.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
promtool check rules deploy/prometheus/alerts.yml
python3 - <<'PY'
import glob, json, yaml
for path in sorted(glob.glob("deploy/k8s/**/*.yaml", recursive=True)) + ["deploy/docker-compose.yml", "deploy/prometheus/prometheus.yml"] + sorted(glob.glob("deploy/grafana/provisioning/*/*.yml")):
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    assert docs, f"{path}: empty"
    for d in docs:
        if path.startswith("deploy/k8s/"):
            assert "apiVersion" in d and "kind" in d, f"{path}: not a Kubernetes object"
    print(f"ok {path}: {len(docs)} document(s)")
d = json.load(open("deploy/grafana/fxgate.json"))
assert d["panels"], "dashboard has no panels"
print(f"ok deploy/grafana/fxgate.json: {len(d['panels'])} panels")
PY
bash deploy/k8s/check.sh
