#!/bin/sh
# The official redis image's entrypoint, for the CI stand-in: options or a .conf
# file as the first argument mean redis-server; as root, /data is handed to the
# redis user and the server runs as that user.
set -eu

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

exec "$@"
