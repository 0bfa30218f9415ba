#!/bin/sh
# Run a command in a new network namespace with only loopback up, when this user may create one
# (root, as in CI). Ray then binds to 127.0.0.1 instead of the machine's routed address.
if unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' "$@"
fi
echo "note: cannot create a network namespace; running without isolation" >&2
exec "$@"
