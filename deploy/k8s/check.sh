#!/usr/bin/env bash
# Static checks of the Kubernetes manifests: every overlay (and the platform pieces)
# renders with `kubectl kustomize`; every rendered object passes kubernetes-validate
# --strict against the oldest supported Kubernetes (1.30) and the newest the tool
# knows, custom resources aside (only the CRD kinds listed below may lack a schema);
# and checkov finds nothing, each skipped check carrying its reason in a
# checkov.io/skipN annotation on the object.
#
# Usage: deploy/k8s/check.sh [TOOLS_VENV]   (default var/k8s-tools, made by `make deploy-tools`)
set -euo pipefail
cd "$(dirname "$0")/../.."
tools="${1:-var/k8s-tools}"
out=var/k8s/rendered
rm -rf "$out" && mkdir -p "$out"

targets=(overlays/production-sealed overlays/production-vault overlays/staging platform/prometheus-adapter)
for target in "${targets[@]}"; do
  name="${target//\//-}"
  kubectl kustomize "deploy/k8s/$target" > "$out/$name.yaml"
  echo "rendered deploy/k8s/$target: $(grep -c '^kind:' "$out/$name.yaml") objects"
done

# Custom resources of the operators Bourse relies on; kubernetes-validate has no schema for them.
crds='SealedSecret|ScaledObject|PodMonitor|PrometheusRule|Cluster|Pooler|VaultAuth|VaultStaticSecret'
for version in 1.30 1.37; do
  report=$("$tools/bin/kubernetes-validate" --strict --quiet -k "$version" "$out"/*.yaml 2>&1) || {
    echo "$report"; echo "kubernetes-validate --strict failed (Kubernetes $version)"; exit 1; }
  unexpected=$(echo "$report" | grep -v -E "Couldn't find schema for kind ($crds) " || true)
  if [ -n "$unexpected" ]; then
    echo "$unexpected"; echo "kubernetes-validate (Kubernetes $version): unexpected output"; exit 1
  fi
  echo "kubernetes-validate --strict: every object passes (Kubernetes $version; custom resources aside)"
done

"$tools/bin/checkov" -d "$out" --framework kubernetes --skip-download --quiet --compact
skipped=$(grep -h -o 'checkov.io/skip[0-9]*: [A-Z0-9_]*=.*' "$out"/*.yaml | sort -u)
if echo "$skipped" | grep -q -E '=\s*$'; then
  echo "a checkov skip without a reason:"; echo "$skipped"; exit 1
fi
echo "checkov: clean; skipped checks and their reasons:"
echo "$skipped" | sed 's/^/  /'
