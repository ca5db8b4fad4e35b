#!/usr/bin/env bash
# CI's own Docker engine. No registry can be reached on CI machines, so `.ci/run`
# installs Debian's docker.io (dockerd 20.10, BuildKit), docker-compose 1.29 and
# debootstrap, and runs a dockerd of its own: its own data root (kept between runs
# on the same machine, with its build cache and the stand-in base images), exec
# root, socket and pid file. It is stopped by that pid at the end.
#
#   deploy/ci/dockerd.sh install   install the Debian packages that are missing
#   deploy/ci/dockerd.sh start     start the engine; prints DOCKER_HOST
#   deploy/ci/dockerd.sh stop      stop it (by its pid) and wait until it is gone
set -euo pipefail

cache=${BOURSE_CI_CACHE:-/var/cache/bourse-ci}
state=${BOURSE_CI_RUN:-/run/bourse-ci}
socket=$state/docker.sock
pidfile=$state/dockerd.pid

running_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

stop() {
  local pid
  pid=$(running_pid)
  if [ -z "$pid" ]; then return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { echo "dockerd: stopped (pid $pid)"; return 0; }
    sleep 0.2
  done
  echo "dockerd: pid $pid did not stop within 30 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
  install)
    missing=()
    for package in docker.io docker-compose debootstrap; do
      dpkg-query --show --showformat='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    fi
    /usr/bin/docker --version
    docker-compose --version
    ;;
  start)
    stop  # one left behind by an interrupted run
    mkdir -p "$cache/docker" "$state"
    rm -f "$socket"
    # setsid: the engine keeps running between the steps of .ci/run, in its own session.
    setsid /usr/sbin/dockerd --data-root "$cache/docker" --exec-root "$state/exec" --host "unix://$socket" \
      --pidfile "$pidfile" --storage-driver overlay2 > "$state/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 150); do
      if /usr/bin/docker --host "unix://$socket" version > /dev/null 2>&1; then
        echo "dockerd: running (pid $(running_pid)), DOCKER_HOST=unix://$socket, data root $cache/docker"
        exit 0
      fi
      sleep 0.2
    done
    tail -n 30 "$state/dockerd.log" >&2
    echo "dockerd: did not answer within 30 s" >&2
    exit 1
    ;;
  stop)
    stop
    ;;
  *)
    echo "usage: $0 install|start|stop" >&2
    exit 2
    ;;
esac
