#!/usr/bin/env bash
# deploy/local/lb.sh — a local load balancer in front of gateway replicas: nginx from
# Debian's package, run as an unprivileged-style process with its own config, pid and logs
# under $DASHSTREAM_STATE_DIR/lb, configured for WebSocket upgrades and long-lived connections.
#
# Usage: deploy/local/lb.sh start PORT UPSTREAM...   e.g. start 8080 127.0.0.1:9001 127.0.0.1:9002
#        deploy/local/lb.sh stop|status
# Gateways behind it should trust it for X-Forwarded-For: GATEWAY_TRUSTED_PROXIES=127.0.0.1.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_state_dir
LB_DIR="$DASHSTREAM_STATE_DIR/lb"
PIDFILE="$LB_DIR/nginx.pid"

cmd_start() {
  local port="${1:?usage: lb.sh start PORT UPSTREAM...}"
  shift
  (($# > 0)) || die "usage: lb.sh start PORT UPSTREAM..."
  [[ -x /usr/sbin/nginx ]] || ensure_apt_packages nginx
  pid_alive "$PIDFILE" nginx && cmd_stop
  mkdir -p "$LB_DIR/tmp"
  local upstreams=""
  for u in "$@"; do upstreams+="    server $u max_fails=1 fail_timeout=2s;"$'\n'; done
  cat >"$LB_DIR/nginx.conf" <<CONF
worker_processes 1;
pid $PIDFILE;
error_log $LB_DIR/error.log warn;
events { worker_connections 20000; }
worker_rlimit_nofile 45000;
http {
  access_log off;
  # Resume cursors of wide topics: up to 64 KiB in the URL, up to 192 KiB in the
  # DashStream-Cursor header (docs/PROTOCOL.md, Cursors).
  large_client_header_buffers 4 256k;
  client_body_temp_path $LB_DIR/tmp/body;
  proxy_temp_path $LB_DIR/tmp/proxy;
  fastcgi_temp_path $LB_DIR/tmp/fastcgi;
  uwsgi_temp_path $LB_DIR/tmp/uwsgi;
  scgi_temp_path $LB_DIR/tmp/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream gateways {
    least_conn;
$upstreams  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      # The Host the browser used (with its port): the gateway compares a browser's Origin with it.
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
CONF
  /usr/sbin/nginx -t -c "$LB_DIR/nginx.conf" -p "$LB_DIR" >/dev/null 2>&1 ||
    { /usr/sbin/nginx -t -c "$LB_DIR/nginx.conf" -p "$LB_DIR"; die "nginx rejected its config"; }
  /usr/sbin/nginx -c "$LB_DIR/nginx.conf" -p "$LB_DIR"
  wait_for "nginx on 127.0.0.1:$port" 20 port_open "$port"
  log "load balancer on 127.0.0.1:$port -> $*"
}

cmd_stop() {
  stop_pid "$PIDFILE" nginx 10
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) pid_alive "$PIDFILE" nginx ;;
  *) die "usage: $0 start PORT UPSTREAM... | stop | status" ;;
esac
