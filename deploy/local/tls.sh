#!/usr/bin/env bash
# deploy/local/tls.sh — a private CA and certificates for the local Kafka and Redis TLS listeners.
#
# Usage: deploy/local/tls.sh ensure|dir|rotate
#
# ensure: creates (once; idempotent, under a lock) in $DASHSTREAM_STATE_DIR/tls/:
#   ca.pem, ca.key                the local CA (10 years)
#   server.pem, server.key        CN=localhost, SAN DNS:localhost, IP:127.0.0.1, signed by the CA
#   server.p12, server.p12.password   the same key and chain as PKCS#12, for the Kafka broker
#   client.pem, client.key        CN=dashstream-client, clientAuth, signed by the CA (mTLS)
#   rogue-ca.pem, rogue-client.pem, rogue-client.key
#                                 a second CA nobody trusts and a client certificate it signed,
#                                 for the tests that an untrusted certificate is refused
#   passwords/*.password          random passwords of the local SASL and Redis ACL users
#                                 (kafka-dashstream, redis-ingest, redis-gateway), mode 0600
#   Then prints the directory.
# dir:    prints the directory (without creating anything).
# rotate: removes everything above and creates it anew (restart Kafka and Redis after it).
# Keys are unencrypted and readable only by their owner: this is a development CA on one machine.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TLS_DIR="$DASHSTREAM_STATE_DIR/tls"

# sign NAME CN EXT CA: a 2048-bit RSA key NAME.key and a certificate NAME.pem for CN, signed by
# CA (ca or rogue-ca) with the extensions EXT (an openssl -extfile body).
sign() {
  local name="$1" cn="$2" ext="$3" ca="$4"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$TLS_DIR/$name.key" \
    -subj "/O=DashStream local/CN=$cn" -out "$TLS_DIR/$name.csr" 2>/dev/null
  openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/$ca.pem" -CAkey "$TLS_DIR/$ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile <(printf '%s\n' "$ext") \
    -out "$TLS_DIR/$name.pem" 2>/dev/null
  rm -f "$TLS_DIR/$name.csr"
}

new_ca() {
  local name="$1" cn="$2"
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.pem" -subj "/O=DashStream local/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

new_password() {
  local f="$TLS_DIR/passwords/$1.password"
  [[ -s "$f" ]] && return 0
  (umask 077 && openssl rand -hex 24 >"$f")
}

do_ensure() {
  command -v openssl >/dev/null || ensure_apt_packages openssl
  mkdir -p "$TLS_DIR/passwords"
  chmod 700 "$TLS_DIR" "$TLS_DIR/passwords"
  if [[ ! -s "$TLS_DIR/client.pem" ]]; then
    log "creating a local CA and certificates in $TLS_DIR"
    (
      umask 077
      new_ca ca "DashStream local CA"
      sign server localhost "$(printf '%s\n' \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1")" ca
      openssl rand -hex 16 >"$TLS_DIR/server.p12.password"
      openssl pkcs12 -export -in "$TLS_DIR/server.pem" -inkey "$TLS_DIR/server.key" \
        -certfile "$TLS_DIR/ca.pem" -name server -passout "file:$TLS_DIR/server.p12.password" \
        -out "$TLS_DIR/server.p12"
      new_ca rogue-ca "Somebody else's CA"
      sign rogue-client dashstream-client "$(printf '%s\n' \
        "basicConstraints=CA:FALSE" "extendedKeyUsage=clientAuth")" rogue-ca
      # Written last: its presence means the set is complete.
      sign client dashstream-client "$(printf '%s\n' \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=clientAuth")" ca
    )
  fi
  new_password kafka-dashstream
  new_password redis-ingest
  new_password redis-gateway
  printf '%s\n' "$TLS_DIR"
}

main() {
  ensure_state_dir
  case "${1:-}" in
  ensure) with_lock tls do_ensure ;;
  dir) printf '%s\n' "$TLS_DIR" ;;
  rotate)
    with_lock tls rm -rf "$TLS_DIR"
    with_lock tls do_ensure
    ;;
  *)
    echo "usage: $0 ensure|dir|rotate" >&2
    exit 2
    ;;
  esac
}

main "$@"
