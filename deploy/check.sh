#!/usr/bin/env bash
# Static checks of deploy/: alert rules (promtool), every Kubernetes overlay rendered and
# validated (k8s/check.sh), compose YAML, dashboard JSON.
# (Which metrics they name is checked against a live scrape by tests/observability.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
python3 - <<'PY'
import glob, json, re, yaml
for path in sorted(glob.glob("deploy/k8s/**/*.yaml", recursive=True)) + ["deploy/docker-compose.yml", "deploy/prometheus/prometheus.yml"] + sorted(glob.glob("deploy/grafana/provisioning/*/*.yml")):
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    assert docs, f"{path}: empty"
    for d in docs:
        if path.startswith("deploy/k8s/"):
            assert "apiVersion" in d and "kind" in d, f"{path}: not a Kubernetes object"
    print(f"ok {path}: {len(docs)} document(s)")
d = json.load(open("deploy/grafana/fxgate.json"))
assert d["panels"], "dashboard has no panels"
variables = {v["name"]: v for v in d["templating"]["list"]}
assert variables["datasource"]["type"] == "datasource", "no datasource variable"
assert {"job", "instance", "corp", "client"} <= set(variables), "no job/instance/corp/client variables"
for panel in d["panels"]:
    assert panel["datasource"]["uid"] == "${datasource}", f"{panel['title']}: fixed datasource"
    for t in panel["targets"]:
        # Every selector scoped to the chosen job and instances (the test against a live
        # Prometheus in smoke.sh evaluates them).
        names = re.findall(r"\b(?:fxgate|process)_[a-z0-9_]+\{?", t["expr"])
        scoped = re.findall(r'\b(?:fxgate|process)_[a-z0-9_]+\{job=~"\$job", instance=~"\$instance"', t["expr"])
        assert len(names) == len(scoped), f"{panel['title']}: unscoped selector in {t['expr']}"
titles = " ".join(p["title"] for p in d["panels"])
for needed in ("Shared store", "Passthrough", "by caller", "CPU", "Process memory"):
    assert needed in titles, f"dashboard has no {needed} panel"
# Units where a byte count would otherwise read as a plain number.
for panel in d["panels"]:
    unit = panel["fieldConfig"]["defaults"].get("unit")
    if any(w in panel["title"].lower() for w in ("memory", "bytes")):
        assert unit in ("bytes", "Bps"), f"{panel['title']}: unit {unit}, not bytes"
# Per-caller panels filter by the client variable, per-corp ones by the corp variable.
for panel in d["panels"]:
    for t in panel["targets"]:
        if "by caller" in panel["title"]:
            assert 'client=~"$client"' in t["expr"], f"{panel['title']}: not filtered by $client"
        if "corp" in panel["title"].lower() or "Token" in panel["title"]:
            assert 'corp=~"$corp"' in t["expr"], f"{panel['title']}: not filtered by $corp"
print(f"ok deploy/grafana/fxgate.json: {len(d['panels'])} panels, datasource/job/instance/corp/client variables, units")

# The image: pinned bases (a release tag, never a floating one), non-root, no shell needed for
# the health check, the caller-less config, a stripped binary. (No Docker engine in CI: the
# build itself is not run here.)
docker = open("deploy/Dockerfile").read()
for line in docker.splitlines():
    if line.startswith("FROM "):
        image = line.split()[1]
        tag = image.split("@")[0].rsplit(":", 1)
        assert len(tag) == 2 and tag[1] not in ("latest", "1", "bookworm") and re.search(r"\d+\.\d+|nonroot|@sha256", image), f"Dockerfile: {image} floats"
assert re.search(r"^USER 65532", docker, re.M), "Dockerfile: not non-root"
assert 'CMD ["/usr/local/bin/fxgate", "healthcheck"' in docker, "Dockerfile: HEALTHCHECK not exec-form fxgate healthcheck"
assert "COPY deploy/image.toml /etc/fxgate/fxgate.toml" in docker, "Dockerfile: ships a config with callers"
assert "STRIP=symbols" in docker, "Dockerfile: binary not stripped"
ignored = open(".dockerignore").read().split()
for p in ("target/", ".git/", "deploy/k8s/components/secrets-from-files/secrets/", "deploy/k8s/overlays/redis/secrets/"):
    assert p in ignored, f".dockerignore lacks {p}"
# Dependencies in a layer of their own: built from Cargo.toml/Cargo.lock alone, before src/.
build = docker[: docker.index("FROM gcr.io")]
deps = build.index("COPY Cargo.toml Cargo.lock ./")
first_build = build.index("cargo build", deps)
assert deps < first_build < build.index("COPY src ./src") < build.rindex("cargo build"), "Dockerfile: no dependency layer before COPY src"
for key in ("source", "revision", "version"):
    assert f"org.opencontainers.image.{key}=" in docker, f"Dockerfile: no OCI label {key}"
print("ok deploy/Dockerfile: pinned bases, non-root, fxgate healthcheck, caller-less config, stripped, dependency layer, OCI labels")

# Compose: every service reports its health (fxgate's own image has a HEALTHCHECK; the
# sandbox, which runs the same image without an admin port, overrides it), every dependency
# waits for health, and Prometheus scrapes every replica.
compose = yaml.safe_load(open("deploy/docker-compose.yml"))["services"]
for name, svc in compose.items():
    own_image = "build" in svc and name != "sandbox"
    assert own_image or "healthcheck" in svc, f"docker-compose: {name} has no healthcheck"
    deps = svc.get("depends_on", {})
    assert isinstance(deps, dict) and all(d.get("condition") == "service_healthy" for d in deps.values()), \
        f"docker-compose: {name} does not wait for its dependencies' health"
targets = {t for j in yaml.safe_load(open("deploy/prometheus/prometheus.yml"))["scrape_configs"] for c in j["static_configs"] for t in c["targets"]}
replicas = {f"{n}:9090" for n, svc in compose.items() if "fxgate" in n}
assert replicas <= targets, f"prometheus.yml scrapes {targets}, not every replica {replicas}"
print(f"ok deploy/docker-compose.yml: {len(compose)} services with health checks, dependencies on health, every replica scraped")

# Each alert: a `for:`, and a runbook_url whose anchor is a heading of the Runbook in docs/operations.md.
def anchor(heading):
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
readme = open("docs/operations.md").read()
runbook = readme[readme.index("\n## Runbook"):]
runbook = runbook[: runbook.find("\n## ", 1) if "\n## " in runbook[1:] else None]
anchors = {anchor(l.lstrip("#")) for l in runbook.splitlines() if l.startswith("### ")}
rules = [r for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"] for r in g["rules"] if "alert" in r]
for r in rules:
    assert r.get("for"), f"{r['alert']}: no for:"
    url = r["annotations"]["runbook_url"]
    assert url.split("#")[1] in anchors, f"{r['alert']}: {url} has no section in the Runbook of docs/operations.md"
print(f"ok deploy/prometheus/alerts.yml: {len(rules)} alerts, each with for: and a runbook section")
PY
bash deploy/k8s/check.sh

# The systemd unit, as systemd itself reads it (ExecStart pointed at the binary built here:
# verify checks that the command exists).
bin=""
for b in target/release/fxgate target/debug/fxgate; do [ -x "$b" ] && bin="$PWD/$b" && break; done
if [ -z "$bin" ]; then cargo build --quiet; bin="$PWD/target/debug/fxgate"; fi
unit_dir=$(mktemp -d)
sed "s|/usr/local/bin/fxgate|$bin|" deploy/fxgate.service > "$unit_dir/fxgate.service"
systemd-analyze verify "$unit_dir/fxgate.service"
grep -q '^LoadCredential=fx_permanent_code:' deploy/fxgate.service
grep -q '^ConfigurationDirectory=fxgate' deploy/fxgate.service
echo "ok deploy/fxgate.service: systemd-analyze verify, every secret by LoadCredential"
