#!/usr/bin/env bash
# `make compose-secrets`: strong random secrets for compose.yaml, in .secrets/
# (git-ignored, never sent to a build). A secret that already exists is kept, so
# that the PostgreSQL and Redis volumes keep working; to rotate everything, run
# `make compose-down` with VOLUMES=1, delete .secrets/ and start again.
set -euo pipefail
dir=${1:-.secrets}

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

for name in postgres_password redis_password jwt_secret totp_key psp_api_key psp_secret; do
  if [ ! -s "$dir/$name" ]; then
    # 256 random bits, hex-encoded: no character needs quoting in any consumer.
    python3 -c 'import secrets; print(secrets.token_hex(32))' > "$dir/$name.new"
    mv "$dir/$name.new" "$dir/$name"
    echo "compose-secrets: generated $dir/$name"
  fi
done
# Redis reads its password from a configuration line (deploy/redis/redis.conf includes it).
printf 'requirepass "%s"\n' "$(cat "$dir/redis_password")" > "$dir/redis_auth.conf.new"
mv "$dir/redis_auth.conf.new" "$dir/redis_auth.conf"

# The containers read them as their own users (uid 1000, postgres, redis) through
# bind mounts; the folder itself stays private to its owner.
chmod 0444 "$dir"/*
