#!/usr/bin/env bash
# A self-signed certificate for local HTTPS (never for production: use Let's Encrypt,
# see docs/deployment.md).
#
#   scripts/self-signed-cert.sh OUT_DIR [NAME] [DAYS]
#
# Writes OUT_DIR/uba.crt and OUT_DIR/uba.key (ECDSA P-256, key readable by the owner
# only). The certificate is valid for NAME (default localhost), localhost and
# 127.0.0.1, so clients can verify it with e.g. `curl --cacert OUT_DIR/uba.crt`.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
  echo "usage: $0 OUT_DIR [NAME] [DAYS]" >&2
  exit 2
fi
command -v openssl >/dev/null 2>&1 || { echo "error: openssl not found" >&2; exit 1; }
out=$1 name=${2:-localhost} days=${3:-365}
[[ $days =~ ^[0-9]+$ ]] || { echo "error: DAYS must be a whole number, got '$days'" >&2; exit 1; }
mkdir -p "$out"
san="DNS:$name,DNS:localhost,IP:127.0.0.1"
[ "$name" = localhost ] && san="DNS:localhost,IP:127.0.0.1"
( umask 077
  openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$out/uba.key" -out "$out/uba.crt" -days "$days" -sha256 \
    -subj "/CN=$name" -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,digitalSignature,keyCertSign" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null )
chmod 644 "$out/uba.crt"
echo "wrote $out/uba.crt and $out/uba.key for $san, valid $days days"
