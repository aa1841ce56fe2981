#!/bin/sh
# Renders this pod's routemesh configuration, then checks it.
#
# routemesh reads no environment variables inside its config file, yet a worker
# must advertise its own pod IP and the Redis URL may carry a password. So the
# chart's ConfigMap holds a template with @@NAME@@ placeholders, and this script
# (run by the render-config init container, with the image's own /bin/sh and
# awk) replaces each with the environment variable NAME:
#   POD_IP, POD_NAME   from the downward API
#   POD_HOST           POD_IP, bracketed when it is IPv6 (for URLs)
#   REDIS_URL          from redis.external.existingSecret, when set
#   AUTH_KEYS          from auth.existingSecret (a JSON list), when set
# The result goes to $OUT, an emptyDir in memory, and `routemesh check-config`
# fails the pod at once, naming the key, if routemesh would reject it.
set -eu
TEMPLATE=${TEMPLATE:-/etc/routemesh/template/config.yaml}
OUT=${OUT:-/run/routemesh/config.yaml}
case "${POD_IP:-}" in
  *:*) POD_HOST="[$POD_IP]" ;;
  *) POD_HOST="${POD_IP:-}" ;;
esac
export POD_HOST
# Plain string concatenation, so values may hold any character (&, /, \).
awk '
/^[ \t]*#/ { print; next }  # comments are copied as they are
{
  out = ""; rest = $0
  while (match(rest, /@@[A-Z_]+@@/)) {
    name = substr(rest, RSTART + 2, RLENGTH - 4)
    if (!(name in ENVIRON) || ENVIRON[name] == "") {
      printf "render-config: line %d uses @@%s@@ but $%s is not set\n", NR, name, name > "/dev/stderr"
      exit 2
    }
    value = ENVIRON[name]
    gsub(/[\r\n]+/, " ", value)  # a multi-line Secret (JSON) stays on its line
    out = out substr(rest, 1, RSTART - 1) value
    rest = substr(rest, RSTART + RLENGTH)
  }
  print out rest
}' "$TEMPLATE" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
if ! routemesh check-config "$OUT" > /dev/null; then
  echo "render-config: routemesh rejects the rendered configuration (see the error above)" >&2
  exit 1
fi
echo "render-config: wrote $OUT"
