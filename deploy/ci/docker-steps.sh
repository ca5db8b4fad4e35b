#!/usr/bin/env bash
# CI's Docker steps (.ci/run): the image and the compose stack, built and run for
# real. No registry can be reached on CI machines, so this runs Debian's own Docker
# engine, private to this run, on stand-in base images built with debootstrap
# (deploy/ci/; README, "Run with Docker"). Needs root. Each step prints how long it
# took; the engine is stopped by its pid at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."

step_name=""
step_started=$SECONDS
step_done() { [ -z "$step_name" ] || printf '    (%s: %d s)\n' "$step_name" "$((SECONDS - step_started))"; }
step() { step_done; step_name=$*; step_started=$SECONDS; printf '\n--> %s\n' "$*"; }
started=$SECONDS

step "Debian's docker.io (dockerd and client 20.10), docker-compose 1.29, debootstrap"
deploy/ci/dockerd.sh install
mkdir -p /var/cache/bourse-ci
exec 9> /var/cache/bourse-ci/ci.lock
flock 9  # one run at a time owns the engine, its cache and 127.0.0.1:8080

step "A private dockerd (its own data root, exec root and socket)"
deploy/ci/dockerd.sh start
trap 'step_done; deploy/ci/dockerd.sh stop' EXIT
export DOCKER_HOST=unix:///run/bourse-ci/docker.sock DOCKER=/usr/bin/docker COMPOSE=docker-compose
# The stand-ins carry this machine's CA bundle; only the build stages are told about it.
ca=/etc/ssl/certs/ca-certificates.crt
export DOCKER_BUILD_FLAGS="--network host --progress plain --build-arg PIP_CERT=$ca --build-arg SSL_CERT_FILE=$ca --build-arg NODE_EXTRA_CA_CERTS=$ca"

step "Stand-in base images (debootstrap from this machine's Debian mirror, cached in /var/cache/bourse-ci)"
deploy/ci/standins.sh

step "hadolint Dockerfile; docker-compose config"
.venv/bin/hadolint Dockerfile
echo "hadolint: Dockerfile: clean"
for files in "compose.yaml" "compose.yaml compose.dev.yaml" "compose.yaml deploy/e2e/compose.e2e.yaml"; do
  # shellcheck disable=SC2046 # one --file per word
  docker-compose $(printf -- '--file %s ' $files) config --quiet
  echo "docker-compose config: $files: valid"
done

step "make image"
make image

step "Image checks: contents, uid 1000, read-only, HEALTHCHECK, PID 1, byte-code, size, cold start, rebuild"
.venv/bin/python -m deploy.image_checks --image bourse:local --docker /usr/bin/docker --rebuild \
  --build-flags "$DOCKER_BUILD_FLAGS"

step "make compose-e2e: the stack through nginx, then its fault checks"
make compose-e2e

step "Stop the engine"
trap - EXIT
deploy/ci/dockerd.sh stop
step_done
echo "Docker steps: $((SECONDS - started)) s in all"
