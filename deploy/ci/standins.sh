#!/usr/bin/env bash
# Stand-in base images for CI, where no registry can be reached.
#
# Every base image that the Dockerfile (ARG *_IMAGE=...) and compose.yaml
# (image: ${..._IMAGE:-...}) name by default is built here with debootstrap from
# the Debian mirror this machine's apt sources already use, imported with
# `docker import` and tagged with exactly that name. A machine with registry
# access never runs this: it pulls the real images.
#
# The root filesystems are cached under $BOURSE_CI_CACHE/standins (default
# /var/cache/bourse-ci), each keyed by the content of the parts of this script
# that make it (bootstrap, its recipe) and of its files in deploy/ci/standins/,
# so a warm run builds nothing and only imports what the engine lacks.
#
# The host's CA bundle is copied into each stand-in: outbound TLS on CI machines
# may be re-signed by a local authority, and build stages name the bundle
# through PIP_CERT / SSL_CERT_FILE / NODE_EXTRA_CA_CERTS build arguments.
#
# Usage: deploy/ci/standins.sh            build or import every stand-in needed
#        deploy/ci/standins.sh --list     print the image names needed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
cache=${BOURSE_CI_CACHE:-/var/cache/bourse-ci}
host_ca=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
label=org.bourse.ci.standin-key

# The image names, from the files that use them (never a second list to keep in step).
needed_images() {
  sed -n 's/^ARG [A-Z_]*_IMAGE=\(.*\)$/\1/p' "$root/Dockerfile"
  # APP_IMAGE is the image this repository builds, not a base.
  sed -n '/APP_IMAGE/!s/^ *image: *"\{0,1\}\${[A-Z_]*_IMAGE:-\([^}]*\)}.*$/\1/p' "$root/compose.yaml"
}

# The Debian mirror of the host's own apt sources (deb822 .sources or one-line lists).
debian_mirror() {
  local suite=$1 uri
  uri=$(awk -v suite="$suite" '
    BEGIN { RS = ""; FS = "\n" }
    {
      types = ""; uris = ""; suites = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^Types:/) types = $i
        if ($i ~ /^URIs:/) uris = $i
        if ($i ~ /^Suites:/) suites = $i
      }
      if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ (" " suite " ")) {
        sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
      }
    }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == suite) { print $i; exit } }')
  fi
  # A host that only knows its own release still names the mirror that serves the others.
  if [ -z "$uri" ] && [ "$suite" != "$(. /etc/os-release && echo "$VERSION_CODENAME")" ]; then
    debian_mirror "$(. /etc/os-release && echo "$VERSION_CODENAME")"
    return
  fi
  [ -n "$uri" ] || { echo "standins: no Debian mirror for $suite in this machine's apt sources" >&2; exit 1; }
  echo "$uri"
}

# debootstrap a minimal root filesystem with extra packages, trimmed like Docker's Debian images.
bootstrap() {
  local suite=$1 packages=$2 dir=$3
  mkdir -p "$cache/debs/$suite"
  debootstrap --variant=minbase --cache-dir="$cache/debs/$suite" --include="$packages" \
    "$suite" "$dir" "$(debian_mirror "$suite")" > "$dir.log" 2>&1 \
    || { tail -n 30 "$dir.log" >&2; echo "standins: debootstrap $suite failed (log: $dir.log)" >&2; return 1; }
  mkdir -p "$dir/etc/ssl/certs"
  cp "$host_ca" "$dir/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
    "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/* \
    "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/debootstrap
}

# --- recipes: one per repository name ------------------------------------------------

# python:3.11-slim-bookworm: /usr/local/bin/python3, pip installed by ensurepip (so
# the image has to remove it, as with the real base), no byte-code for the stdlib.
recipe_python() {
  local dir=$1 ref=$2 suite version
  version=$(echo "$ref" | sed -n 's/^[^:]*:\([0-9]*\.[0-9]*\).*/\1/p')
  suite=$(echo "$ref" | grep -o 'bookworm\|trixie' || echo bookworm)
  bootstrap "$suite" "python$version,python$version-venv,python3-distutils,ca-certificates,netbase,tzdata" "$dir"
  rm -f "$dir/usr/lib/python$version/EXTERNALLY-MANAGED"
  for name in python3 python "python$version"; do ln -sf "/usr/bin/python$version" "$dir/usr/local/bin/$name"; done
  # Debian disables ensurepip outside virtual environments: pip installs itself from its wheel.
  chroot "$dir" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin /bin/bash -c "set -e; whl=\$(echo /usr/share/python-wheels/pip-*.whl)
    python$version \$whl/pip install --quiet --no-index --root-user-action=ignore --disable-pip-version-check \
      \$whl /usr/share/python-wheels/setuptools-*.whl"
  find "$dir/usr/lib/python$version" "$dir/usr/lib/python3" -name __pycache__ -prune -exec rm -rf {} +
  IMPORT_CHANGES=('ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENV LANG=C.UTF-8'
    'CMD ["python3"]')
}

# node:20-bookworm-slim and the like (for the web UI's stage): Node 20 and npm from
# trixie, the first Debian suite with Node 20. npm comes through apt inside the
# root filesystem: debootstrap's own resolver cannot install its dependencies.
recipe_node() {
  local dir=$1
  bootstrap trixie "nodejs,ca-certificates" "$dir"
  chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive /bin/sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends npm > /dev/null && apt-get clean'
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/var/log/apt/*
  IMPORT_CHANGES=('ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["node"]')
}

# postgres:15-bookworm: the official image's interface (POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD[_FILE], PGDATA, pg_isready on PATH), with Debian's server.
recipe_postgres() {
  local dir=$1 ref=$2 major
  major=$(echo "$ref" | sed -n 's/^[^:]*:\([0-9]*\).*/\1/p')
  bootstrap bookworm "postgresql-$major,ca-certificates" "$dir"
  rm -rf "$dir/etc/postgresql/$major/main" "$dir/var/lib/postgresql/$major"
  install -m 0755 "$here/standins/postgres-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
  install -d -m 2777 "$dir/var/run/postgresql"
  chroot "$dir" chown postgres:postgres /var/run/postgresql
  IMPORT_CHANGES=("ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    'ENV PGDATA=/var/lib/postgresql/data' 'ENV LANG=C.UTF-8' 'ENTRYPOINT ["docker-entrypoint.sh"]'
    'CMD ["postgres"]' 'EXPOSE 5432')
}

# redis:7.2-bookworm: redis-server and redis-cli on PATH, /data, dropping to the redis user.
recipe_redis() {
  local dir=$1
  bootstrap bookworm "redis-server,redis-tools" "$dir"
  install -m 0755 "$here/standins/redis-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
  install -d "$dir/data"
  chroot "$dir" chown redis:redis /data
  IMPORT_CHANGES=('ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["redis-server"]' 'WORKDIR /data' 'EXPOSE 6379')
}

# nginx:1.30: conf.d/*.conf included in the http block, logs to stdout and stderr.
recipe_nginx() {
  local dir=$1
  bootstrap bookworm "nginx,curl,ca-certificates" "$dir"
  rm -f "$dir/etc/nginx/sites-enabled/default"
  ln -sf /dev/stdout "$dir/var/log/nginx/access.log"
  ln -sf /dev/stderr "$dir/var/log/nginx/error.log"
  IMPORT_CHANGES=('CMD ["nginx", "-g", "daemon off;"]' 'EXPOSE 80')
}

# --------------------------------------------------------------------------------------

# What a stand-in is made from: the functions that build it, its own files, its name
# and the host's CA bundle. Any change to one of them builds it again.
recipe_key() {
  local repo=$1 ref=$2
  {
    declare -f bootstrap debian_mirror "recipe_$repo"
    cat "$here/standins/$repo"-* 2>/dev/null || true
    echo "$ref"
    cat "$host_ca"
  } | sha256sum | cut -c1-16
}

standin() {
  local ref=$1 repo slug tarball work start key
  repo=${ref%%:*}
  repo=${repo##*/}
  slug=$(echo "$ref" | tr '/:@' '___')
  declare -F "recipe_$repo" > /dev/null || { echo "standins: no stand-in recipe for $ref" >&2; exit 1; }
  key=$(recipe_key "$repo" "$ref")
  tarball="$cache/standins/$slug-$key.tar"
  if [ "$("$DOCKER" image inspect --format "{{index .Config.Labels \"$label\"}}" "$ref" 2>/dev/null)" = "$key" ]; then
    echo "standins: $ref is up to date"
    return
  fi
  start=$SECONDS
  IMPORT_CHANGES=()
  if [ ! -s "$tarball" ]; then
    work="$cache/work/$slug"
    rm -rf "$work" "$work.log"
    mkdir -p "$cache/work" "$cache/standins"
    "recipe_$repo" "$work" "$ref"
    printf '%s\n' "${IMPORT_CHANGES[@]}" > "$work.changes"
    tar -C "$work" --numeric-owner -cf "$tarball.part" .
    mv "$work.changes" "$tarball.changes"
    mv "$tarball.part" "$tarball"
    rm -rf "$work" "$work.log"
    find "$cache/standins" -name "$slug-*" ! -name "$slug-$key.*" -delete
  fi
  local args=() previous
  while IFS= read -r change; do args+=(--change "$change"); done < "$tarball.changes"
  previous=$("$DOCKER" image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
  "$DOCKER" import "${args[@]}" --change "LABEL $label=$key" "$tarball" "$ref" > /dev/null
  # The stand-in this one replaces, unless something still uses it.
  if [ -n "$previous" ]; then "$DOCKER" image rm "$previous" > /dev/null 2>&1 || true; fi
  echo "standins: $ref imported ($((SECONDS - start)) s)"
}

main() {
  local refs
  mapfile -t refs < <(needed_images | sort -u)
  [ "${#refs[@]}" -gt 0 ] || { echo "standins: found no image names in Dockerfile or compose.yaml" >&2; exit 1; }
  if [ "${1:-}" = --list ]; then printf '%s\n' "${refs[@]}"; return; fi
  command -v debootstrap > /dev/null || { echo "standins: debootstrap is not installed" >&2; exit 1; }
  mkdir -p "$cache"
  for ref in "${refs[@]}"; do standin "$ref"; done
}

main "$@"
