#!/usr/bin/env bash
# Deploy one overlay: the migration Job first, awaited, then the rollout.
#
#   deploy/k8s/deploy.sh OVERLAY      (make deploy OVERLAY=production-sealed)
#
# 1. Render the overlay once, so the Job and the Deployments come from the same build.
# 2. Apply everything except the API, matcher, worker and scheduler workloads: namespaces,
#    the new ConfigMap (its name carries a hash, so running pods keep theirs),
#    secrets, policies, data services and the migration Job, deleted first because a
#    Job's pod template cannot be changed.
# 3. Wait for `bourse migrate` to complete. Migrations are expand/contract
#    (docs/decisions/0003), so the old pods keep serving on the new schema.
# 4. Apply everything: the Deployments roll out (maxSurge 1, maxUnavailable 0), and
#    wait for each rollout to finish.
set -euo pipefail
overlay="${1:?usage: deploy.sh OVERLAY (production-sealed, production-vault or staging)}"
here="$(cd "$(dirname "$0")" && pwd)"
dir="$here/overlays/$overlay"
[ -d "$dir" ] || { echo "no overlay $overlay in $here/overlays" >&2; exit 2; }
ns=bourse
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$dir" > "$rendered"
if grep -q 'sha256:0000000000000000000000000000000000000000000000000000000000000000' "$rendered"; then
  echo "the overlay still pins the placeholder digest: run make deploy-image DIGEST=sha256:... first" >&2
  exit 2
fi

echo "==> migration: bourse migrate"
kubectl -n "$ns" delete job bourse-migrate --ignore-not-found --wait=true
kubectl apply -f "$rendered" -l 'app.kubernetes.io/component notin (api,matcher,stream,worker,scheduler)'
if ! kubectl -n "$ns" wait --for=condition=complete job/bourse-migrate --timeout=30m; then
  kubectl -n "$ns" logs job/bourse-migrate --all-containers --tail=100 || true
  echo "the migration did not complete: nothing was rolled out" >&2
  exit 1
fi

echo "==> rollout"
kubectl apply -f "$rendered"
for deployment in bourse-matcher bourse-api bourse-stream bourse-worker bourse-scheduler; do
  kubectl -n "$ns" rollout status "deployment/$deployment" --timeout=20m
done
