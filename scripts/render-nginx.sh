#!/usr/bin/env bash
# Render the UBA nginx site (configs/nginx/) with envsubst.
#
#   scripts/render-nginx.sh [--standalone] OUT_DIR
#
# Writes OUT_DIR/conf.d/uba.conf and OUT_DIR/snippets/uba-{tls,proxy}.conf. With
# OUT_DIR=/etc/nginx that is exactly where Debian/Ubuntu's nginx looks (conf.d/ is
# included in its http block). --standalone also writes OUT_DIR/nginx.conf, a complete
# unprivileged main file (pid, logs, temp dirs under OUT_DIR), run as
#   nginx -p OUT_DIR -c OUT_DIR/nginx.conf -g 'daemon off;'
#
# Settings (environment variables; only these are substituted, nginx's own $variables
# are left alone):
#   UBA_NGINX_CERT, UBA_NGINX_CERT_KEY  certificate chain and key (required), e.g.
#                                 /etc/letsencrypt/live/uba.example.com/{fullchain,privkey}.pem
#   UBA_NGINX_SERVER_NAME   _                 server_name (your DNS name in production)
#   UBA_NGINX_BIND          0.0.0.0           listen address
#   UBA_NGINX_HTTP_PORT     80                plain HTTP (ACME challenge + redirect)
#   UBA_NGINX_HTTPS_PORT    443               HTTPS
#   UBA_NGINX_UPSTREAM      127.0.0.1:8000    the uba-api address
#   UBA_NGINX_RATE          10r/s             per-client request rate (limit_req_zone)
#   UBA_NGINX_BURST         20                requests allowed above the rate before 429
#   UBA_NGINX_MAX_BODY      2m                client_max_body_size (413 above it)
#   UBA_NGINX_METRICS_ALLOW 127.0.0.1         who may read /metrics through nginx (address/CIDR)
#   UBA_NGINX_ACME_ROOT     /var/www/certbot  certbot --webroot directory
#   UBA_NGINX_LOG_DIR       /var/log/nginx    (standalone: OUT_DIR/logs)
#   UBA_NGINX_SNIPPETS      OUT_DIR/snippets  where the site file includes the snippets from
set -euo pipefail

standalone=0
if [ "${1:-}" = "--standalone" ]; then standalone=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--standalone] OUT_DIR" >&2
  exit 2
fi
command -v envsubst >/dev/null 2>&1 || { echo "error: envsubst not found (Debian/Ubuntu: apt-get install gettext-base)" >&2; exit 1; }

src=$(cd "$(dirname "$0")/../configs/nginx" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

fail() { echo "error: $*" >&2; exit 1; }
: "${UBA_NGINX_CERT:?set UBA_NGINX_CERT to the certificate (full chain) file}"
: "${UBA_NGINX_CERT_KEY:?set UBA_NGINX_CERT_KEY to the private key file}"
export UBA_NGINX_SERVER_NAME=${UBA_NGINX_SERVER_NAME:-_}
export UBA_NGINX_BIND=${UBA_NGINX_BIND:-0.0.0.0}
export UBA_NGINX_HTTP_PORT=${UBA_NGINX_HTTP_PORT:-80}
export UBA_NGINX_HTTPS_PORT=${UBA_NGINX_HTTPS_PORT:-443}
export UBA_NGINX_UPSTREAM=${UBA_NGINX_UPSTREAM:-127.0.0.1:8000}
export UBA_NGINX_RATE=${UBA_NGINX_RATE:-10r/s}
export UBA_NGINX_BURST=${UBA_NGINX_BURST:-20}
export UBA_NGINX_MAX_BODY=${UBA_NGINX_MAX_BODY:-2m}
export UBA_NGINX_METRICS_ALLOW=${UBA_NGINX_METRICS_ALLOW:-127.0.0.1}
export UBA_NGINX_ACME_ROOT=${UBA_NGINX_ACME_ROOT:-/var/www/certbot}
export UBA_NGINX_SNIPPETS=${UBA_NGINX_SNIPPETS:-$out/snippets}
export UBA_NGINX_PREFIX=$out
if [ "$standalone" = 1 ]; then
  export UBA_NGINX_LOG_DIR=${UBA_NGINX_LOG_DIR:-$out/logs}
else
  export UBA_NGINX_LOG_DIR=${UBA_NGINX_LOG_DIR:-/var/log/nginx}
fi

for port in UBA_NGINX_HTTP_PORT UBA_NGINX_HTTPS_PORT; do
  [[ ${!port} =~ ^[0-9]+$ ]] && [ "${!port}" -ge 1 ] && [ "${!port}" -le 65535 ] \
    || fail "$port must be a port number 1-65535, got '${!port}'"
done
[[ $UBA_NGINX_RATE =~ ^[0-9]+r/[sm]$ ]] || fail "UBA_NGINX_RATE must look like 10r/s or 600r/m, got '$UBA_NGINX_RATE'"
[[ $UBA_NGINX_BURST =~ ^[0-9]+$ ]] || fail "UBA_NGINX_BURST must be a whole number, got '$UBA_NGINX_BURST'"
[[ $UBA_NGINX_MAX_BODY =~ ^[0-9]+[kKmM]?$ ]] || fail "UBA_NGINX_MAX_BODY must look like 512k or 2m, got '$UBA_NGINX_MAX_BODY'"
[[ $UBA_NGINX_UPSTREAM =~ ^[^[:space:]\;]+:[0-9]+$ ]] || fail "UBA_NGINX_UPSTREAM must be host:port, got '$UBA_NGINX_UPSTREAM'"
# The redirect names the HTTPS port only when it is not the default one.
if [ "$UBA_NGINX_HTTPS_PORT" = 443 ]; then
  export UBA_NGINX_HTTPS_REDIRECT_PORT=""
else
  export UBA_NGINX_HTTPS_REDIRECT_PORT=":$UBA_NGINX_HTTPS_PORT"
fi

vars='${UBA_NGINX_SERVER_NAME} ${UBA_NGINX_BIND} ${UBA_NGINX_HTTP_PORT} ${UBA_NGINX_HTTPS_PORT}
${UBA_NGINX_HTTPS_REDIRECT_PORT} ${UBA_NGINX_CERT} ${UBA_NGINX_CERT_KEY} ${UBA_NGINX_UPSTREAM}
${UBA_NGINX_RATE} ${UBA_NGINX_BURST} ${UBA_NGINX_MAX_BODY} ${UBA_NGINX_METRICS_ALLOW}
${UBA_NGINX_ACME_ROOT} ${UBA_NGINX_LOG_DIR} ${UBA_NGINX_SNIPPETS} ${UBA_NGINX_PREFIX}'

mkdir -p "$out/conf.d" "$out/snippets"
envsubst "$vars" < "$src/uba.conf.template" > "$out/conf.d/uba.conf"
cp "$src/snippets/uba-tls.conf" "$src/snippets/uba-proxy.conf" "$out/snippets/"
if [ "$standalone" = 1 ]; then
  mkdir -p "$out/tmp" "$UBA_NGINX_LOG_DIR"
  envsubst "$vars" < "$src/nginx.conf.template" > "$out/nginx.conf"
fi
echo "rendered $out/conf.d/uba.conf (server ${UBA_NGINX_SERVER_NAME}, https ${UBA_NGINX_BIND}:${UBA_NGINX_HTTPS_PORT} -> ${UBA_NGINX_UPSTREAM})"
