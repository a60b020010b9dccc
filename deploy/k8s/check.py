"""What the Kubernetes schema cannot see in a rendered overlay (called by check.sh)."""
import os
import re
import sys
import tomllib

import yaml

path, variant = sys.argv[1], sys.argv[2]
# existing-*: components/existing-secret, rendered from a checkout without secret files.
existing = variant.startswith("existing-")
monitoring = variant.endswith("monitoring")
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []


def fail(msg):
    problems.append(msg)


def restricted(name, pod):
    """Pod Security Standards, profile "restricted" (v1.32)."""
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            fail(f"{name}: {key}")
    for v in pod.get("volumes", []):
        allowed = {"configMap", "secret", "emptyDir", "projected", "downwardAPI",
                   "persistentVolumeClaim", "ephemeral", "csi"}
        kinds = set(v) - {"name"}
        if not kinds <= allowed:
            fail(f"{name}: volume {v['name']} of type {kinds - allowed}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        where = f"{name}/{c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            fail(f"{where}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{where}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            fail(f"{where}: adds capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            fail(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            fail(f"{where}: runs as uid 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        if not sc.get("readOnlyRootFilesystem"):
            fail(f"{where}: readOnlyRootFilesystem (not PSA, but ours)")
        for port in c.get("ports", []):
            if "hostPort" in port:
                fail(f"{where}: hostPort")
        image = c["image"]
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            fail(f"{where}: image {image} has no pinned tag")


deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
for name, d in deployments.items():
    restricted(name, d["spec"]["template"]["spec"])

for pdb in by_kind.get("PodDisruptionBudget", []):
    spec, name = pdb["spec"], pdb["metadata"]["name"]
    target = next(d for d in deployments.values()
                  if d["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"])
    replicas = target["spec"].get("replicas", 1)
    if "maxUnavailable" in spec and spec["maxUnavailable"] in (0, "0%"):
        fail(f"PDB {name}: maxUnavailable 0 makes nodes undrainable")
    if "minAvailable" in spec and isinstance(spec["minAvailable"], int) and spec["minAvailable"] >= replicas:
        fail(f"PDB {name}: minAvailable {spec['minAvailable']} >= {replicas} replicas")

gateway = deployments["fxgate"]
pod = gateway["spec"]["template"]["spec"]
container = pod["containers"][0]
admin_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "admin")
services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
for p in services["fxgate"]["spec"]["ports"]:
    if p["targetPort"] in ("admin", admin_port):
        fail("Service fxgate (callers) exposes the admin port")
admin_service = services.get("fxgate-admin", {"spec": {"ports": []}})
if not any(p["targetPort"] == "admin" for p in admin_service["spec"]["ports"]):
    fail("no Service fxgate-admin carrying the admin port")
if services["fxgate"]["spec"].get("type", "ClusterIP") != "ClusterIP" or \
        admin_service["spec"].get("type", "ClusterIP") != "ClusterIP":
    fail("fxgate Services must stay ClusterIP (expose callers through your ingress)")

# Config by a watched volume (design §12): the fxgate ConfigMap keeps its name, so an edit
# reaches running pods (applied within server.watch_interval) instead of rolling them; it is
# mounted as a directory (a subPath mount never sees an update). Secrets stay hash-suffixed:
# a new secret rolls the pods.
hashed = re.compile(r"-[a-z0-9]{10}$")
for v in pod["volumes"]:
    if "configMap" in v and v["configMap"]["name"] != "fxgate-config" and not hashed.search(v["configMap"]["name"]):
        fail(f"volume {v['name']} refers to {v['configMap']['name']}, neither the watched config nor hash-suffixed")
    secret = v.get("secret", {}).get("secretName")
    if secret and not existing and not hashed.search(secret):
        fail(f"volume {v['name']} refers to {secret}, not a hash-suffixed generated Secret")
if not any(v.get("configMap", {}).get("name") == "fxgate-config" for v in pod["volumes"]):
    fail("the config is not mounted from the ConfigMap fxgate-config")
for m in container.get("volumeMounts", []):
    if m["name"] == "config" and m.get("subPath"):
        fail("the config volume is mounted by subPath, which never sees an update")
watch = tomllib.loads(next(c for c in by_kind["ConfigMap"] if "fxgate.toml" in c["data"])["data"]["fxgate.toml"])
if watch.get("server", {}).get("watch_interval") in ("0s", "0"):
    fail("server.watch_interval is off: config changes would never reach the pods")
for kind in ("ConfigMap", "Secret"):
    for obj in by_kind.get(kind, []):
        name = obj["metadata"]["name"]
        if kind == "ConfigMap" and name == "fxgate-config":
            pass
        elif not hashed.search(name):
            fail(f"{kind} {name} has no content hash in its name")
        for value in (obj.get("data") or {}).values():
            if "REPLACE_ME" == value:
                fail(f"{kind} {obj['metadata']['name']} holds a placeholder")

# The dedupe index, full, must fit in half the container's memory limit: fxgate refuses to
# start otherwise (src/config/memory.rs), with the bytes per entry of src/dedupe/compact.rs.
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../src/dedupe/compact.rs")
per_entry = int(re.search(r"BYTES_PER_ENTRY: u64 = (\d+);", open(src).read()).group(1))
units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
limit = container["resources"]["limits"]["memory"]
limit = int(limit[:-2]) * units[limit[-2:]] if limit[-2:] in units else int(limit)
config = next(c for c in by_kind["ConfigMap"] if "fxgate.toml" in c["data"])
max_entries = tomllib.loads(config["data"]["fxgate.toml"]).get("dedupe", {}).get("max_entries", 1_000_000)
if max_entries * per_entry > limit // 2:
    fail(f"dedupe.max_entries {max_entries} x {per_entry} B does not fit in half of {limit} B")

policies = {p["metadata"]["name"]: p for p in by_kind.get("NetworkPolicy", [])}
if "fxgate" not in policies:
    fail("no NetworkPolicy for fxgate")
else:
    for rule in policies["fxgate"]["spec"]["ingress"]:
        if any(p["port"] == admin_port for p in rule.get("ports", [])) and not rule.get("from"):
            fail("NetworkPolicy fxgate lets anyone reach the admin port")

if "fxgate-redis" in deployments:
    if "fxgate-redis" not in policies:
        fail("no NetworkPolicy for Redis")
    script = " ".join(deployments["fxgate-redis"]["spec"]["template"]["spec"]["containers"][0]["args"])
    if "--maxmemory-policy noeviction" not in script:
        fail("Redis must run with --maxmemory-policy noeviction")
    # AUTH (design §11): the default user off, one ACL user whose password is a Secret.
    if "--aclfile" not in script or "user default off" not in script or "-@dangerous" not in script:
        fail("Redis must run with an ACL file: the default user off, fxgate's user without dangerous commands")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if env.get("FXGATE__STORE__BACKEND") != "redis":
        fail("the Redis overlay's fxgate does not use the Redis store")
    if env.get("FXGATE__STORE__REDIS_USERNAME") != "fxgate" or not env.get("FXGATE__STORE__REDIS_PASSWORD_FILE"):
        fail("the Redis overlay's fxgate does not log in as its ACL user")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if env.get("FXGATE__STORE__REDIS_PASSWORD_FILE", "").rsplit("/", 1)[0] not in mounts:
        fail("the Redis password file is not mounted in fxgate")

# Secrets managed elsewhere: none rendered, the Deployment points at the named one and tells
# Reloader to roll the pods when it changes.
if existing:
    if by_kind.get("Secret"):
        fail(f"components/existing-secret rendered Secrets: {[x['metadata']['name'] for x in by_kind['Secret']]}")
    names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    if "fxgate-credentials" not in names:
        fail(f"the Deployment does not mount the existing Secret fxgate-credentials: {names}")
    reload = gateway["metadata"].get("annotations", {}).get("secret.reloader.stakater.com/reload")
    if reload != "fxgate-credentials":
        fail("no Reloader annotation naming fxgate-credentials")

# Replicas apart: across zones and nodes (preferred, so small clusters still schedule).
spread = {c["topologyKey"]: c for c in pod.get("topologySpreadConstraints", [])}
for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
    c = spread.get(key)
    if not c or c.get("whenUnsatisfiable") != "ScheduleAnyway" or \
            c["labelSelector"]["matchLabels"] != gateway["spec"]["selector"]["matchLabels"]:
        fail(f"no soft topology spread of fxgate's pods over {key}")
anti = pod.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
if not any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" for t in anti):
    fail("no soft pod anti-affinity by node for fxgate")

# An HPA owns the replica count: a `replicas` in its Deployment would reset it on every apply.
for hpa in by_kind.get("HorizontalPodAutoscaler", []):
    target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
    if "replicas" in target["spec"]:
        fail(f"Deployment {target['metadata']['name']} sets replicas under HPA {hpa['metadata']['name']}")

rules = by_kind.get("PrometheusRule", [])
if monitoring:
    alerts = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../prometheus/alerts.yml")
    if [r["spec"]["groups"] for r in rules] != [yaml.safe_load(open(alerts))["groups"]]:
        fail("components/monitoring's PrometheusRule is not deploy/prometheus/alerts.yml")
elif rules:
    fail("a PrometheusRule without components/monitoring breaks clusters lacking its CRD")

monitors = by_kind.get("ServiceMonitor", [])
if monitoring:
    if len(monitors) != 1:
        fail("components/monitoring did not add one ServiceMonitor")
    for m in monitors:
        sel = m["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values()
                   if sel.items() <= s["metadata"].get("labels", {}).items()]
        ports = {p["name"] for s in matched for p in s["spec"]["ports"]}
        if [s["metadata"]["name"] for s in matched] != ["fxgate-admin"]:
            fail(f"ServiceMonitor selects {[s['metadata']['name'] for s in matched]}, not fxgate-admin")
        for e in m["spec"]["endpoints"]:
            if e["port"] not in ports:
                fail(f"ServiceMonitor endpoint port {e['port']} is not on the admin Service")
elif monitors:
    fail("a ServiceMonitor without components/monitoring breaks clusters lacking its CRD")

if problems:
    print(f"{path}:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
