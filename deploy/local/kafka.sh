#!/usr/bin/env bash
# deploy/local/kafka.sh — run a single-node Apache Kafka (KRaft) on 127.0.0.1.
#
# Usage: deploy/local/kafka.sh start|stop|restart|status|env|logs
#        deploy/local/kafka.sh topics ARGS...        TopicCommand against this broker
#        deploy/local/kafka.sh tool MAIN_CLASS ARGS... any class from the Kafka jars
#
# One combined broker+controller (node.id=1, dynamic quorum formatted with
# --standalone), jars from install-kafka.sh (Maven Central). Listeners, all on 127.0.0.1:
#   PLAINTEXT  no authentication; also the inter-broker listener (the tests' admin clients)
#   SASL_SSL   TLS + SASL SCRAM-SHA-512, user "dashstream", password in
#              $DASHSTREAM_TLS_DIR/passwords/kafka-dashstream.password
#   MTLS       TLS with a client certificate required (security protocol SSL)
#   CONTROLLER KRaft controller (plaintext)
# The TLS listeners use tls.sh's server.p12 (keystore) and trust its ca.pem (PEM truststore);
# start runs tls.sh ensure first. After tls.sh rotate, restart the broker.
# State in $DASHSTREAM_STATE_DIR/kafka/:
#   server.properties, log4j2.xml   generated config (mode 0600: holds the keystore password)
#   sasl-client.properties          client config of the SASL login check (mode 0600)
#   data/                           log.dirs (topic data + KRaft metadata, SCRAM credentials)
#   kafka.log (+ kafka.log.1)       broker log of this (and the previous) run
#   kafka.pid, kafka.env            pid and the ports/cluster id chosen
# start: idempotent. Reuses a running broker; otherwise restarts on the saved
#        ports with the existing data; a saved port now used by someone else
#        moves it to new free ports with the same data (as redis.sh keeps its
#        data, so the streams never get ahead of an empty topic); a first run,
#        or data written by another Kafka version, picks free ports and formats
#        a fresh data dir.
#        A kafka.env from before the TLS listeners keeps its ports and data and gets free
#        ports for the new listeners; a broker still running from before them is restarted.
#        Waits (up to $KAFKA_START_TIMEOUT s, default 90) until the broker
#        answers a topic listing, sets the SCRAM credential of "dashstream" through the
#        plaintext listener (kafka.admin.ConfigCommand; only when a login with the current
#        password fails, so it is idempotent) and waits until a SASL_SSL login works, then
#        prints
#          KAFKA_BROKERS=127.0.0.1:PORT
#          KAFKA_SASL_SSL_BROKERS=127.0.0.1:PORT
#          KAFKA_MTLS_BROKERS=127.0.0.1:PORT
# stop:  SIGTERM (controlled shutdown), SIGKILL after 60 s.
# env:   prints the same lines as start.
# Environment: KAFKA_VERSION (4.1.1), KAFKA_HEAP_OPTS (-Xms512m -Xmx1g).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
export KAFKA_VERSION
KAFKA_DIR="$DASHSTREAM_STATE_DIR/kafka"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_CONF="$KAFKA_DIR/server.properties"
KAFKA_LOG4J="$KAFKA_DIR/log4j2.xml"
KAFKA_TOOLS_LOG4J="$KAFKA_DIR/tools-log4j2.xml"
KAFKA_LOGFILE="$KAFKA_DIR/kafka.log"
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_ENVFILE="$KAFKA_DIR/kafka.env"
KAFKA_SASL_CLIENT_CONF="$KAFKA_DIR/sasl-client.properties"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"

# The SCRAM user of the SASL_SSL listener (its password: tls.sh, passwords/kafka-dashstream.password).
KAFKA_SASL_USER=dashstream
TLS_DIR=""

# Saved by the previous start (kafka.env).
KAFKA_PORT=""
KAFKA_CONTROLLER_PORT=""
KAFKA_SASL_SSL_PORT=""
KAFKA_MTLS_PORT=""
KAFKA_CLUSTER_ID=""
SAVED_KAFKA_VERSION=""

load_saved_env() {
  KAFKA_PORT="" KAFKA_CONTROLLER_PORT="" KAFKA_CLUSTER_ID="" SAVED_KAFKA_VERSION=""
  KAFKA_SASL_SSL_PORT="" KAFKA_MTLS_PORT=""
  [[ -r "$KAFKA_ENVFILE" ]] || return 0
  local key value
  while IFS='=' read -r key value; do
    case "$key" in
    KAFKA_PORT) KAFKA_PORT="$value" ;;
    KAFKA_CONTROLLER_PORT) KAFKA_CONTROLLER_PORT="$value" ;;
    KAFKA_SASL_SSL_PORT) KAFKA_SASL_SSL_PORT="$value" ;;
    KAFKA_MTLS_PORT) KAFKA_MTLS_PORT="$value" ;;
    KAFKA_CLUSTER_ID) KAFKA_CLUSTER_ID="$value" ;;
    KAFKA_VERSION) SAVED_KAFKA_VERSION="$value" ;;
    esac
  done <"$KAFKA_ENVFILE"
}

save_env() {
  cat >"$KAFKA_ENVFILE" <<EOF
KAFKA_PORT=$KAFKA_PORT
KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT
KAFKA_SASL_SSL_PORT=$KAFKA_SASL_SSL_PORT
KAFKA_MTLS_PORT=$KAFKA_MTLS_PORT
KAFKA_CLUSTER_ID=$KAFKA_CLUSTER_ID
KAFKA_VERSION=$KAFKA_VERSION
EOF
}

print_env() {
  printf 'KAFKA_BROKERS=127.0.0.1:%s\n' "$KAFKA_PORT"
  printf 'KAFKA_SASL_SSL_BROKERS=127.0.0.1:%s\n' "$KAFKA_SASL_SSL_PORT"
  printf 'KAFKA_MTLS_BROKERS=127.0.0.1:%s\n' "$KAFKA_MTLS_PORT"
}

# has_secure_ports: kafka.env names the SASL_SSL and mTLS ports (written since they exist).
has_secure_ports() {
  [[ -n "$KAFKA_SASL_SSL_PORT" && -n "$KAFKA_MTLS_PORT" ]]
}

# all_ports: every port of the broker, one per line.
all_ports() {
  printf '%s\n' "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_MTLS_PORT"
}

# new_ports N: N free ports, none of them one of the saved ports (free now, but ours).
new_ports() {
  local n="$1" saved out=() p
  saved=" $(all_ports | tr '\n' ' ') "
  while ((${#out[@]} < n)); do
    for p in $(free_ports "$n"); do
      if [[ "$saved" != *" $p "* && " ${out[*]-} " != *" $p "* ]] && ((${#out[@]} < n)); then
        out+=("$p")
      fi
    done
  done
  printf '%s\n' "${out[@]}"
}

# ensure_tls: the local CA, the broker's keystore and the SASL password (tls.sh, idempotent).
ensure_tls() {
  TLS_DIR="$("$DASHSTREAM_LOCAL_DIR/tls.sh" ensure)" || die "tls.sh ensure failed (see above)"
  local f
  for f in server.p12 server.p12.password ca.pem "passwords/kafka-$KAFKA_SASL_USER.password"; do
    [[ -s "$TLS_DIR/$f" ]] || die "tls.sh ensure did not create $TLS_DIR/$f"
  done
}

# sasl_password: the SCRAM user's password (tls.sh).
sasl_password() {
  tr -d '\n' <"$TLS_DIR/passwords/kafka-$KAFKA_SASL_USER.password"
}

kafka_home() {
  "$DASHSTREAM_LOCAL_DIR/install-kafka.sh"
}

# broker_alive: our broker process (matched by its config path) is running.
broker_alive() {
  pid_alive "$KAFKA_PIDFILE" "$KAFKA_CONF"
}

is_running() {
  broker_alive && [[ -n "$KAFKA_PORT" ]] && port_open "$KAFKA_PORT"
}

# kafka_java HOME ARGS...: a short-lived JVM for Kafka's command-line tools.
# Replaces the calling (sub)shell, so timeout(1)/signals reach the JVM itself.
kafka_java() {
  local home="$1"
  shift
  exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
    -Dlog4j2.configurationFile="$KAFKA_TOOLS_LOG4J" \
    -cp "$home/libs/*" "$@"
}

write_log4j_configs() {
  cat >"$KAFKA_LOG4J" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/local/kafka.sh: broker logs INFO to kafka.log only -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="$KAFKA_LOGFILE" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Root level="INFO">
      <AppenderRef ref="file"/>
    </Root>
  </Loggers>
</Configuration>
EOF
  cat >"$KAFKA_TOOLS_LOG4J" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/local/kafka.sh: command-line tools log WARN to stderr -->
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN">
      <AppenderRef ref="stderr"/>
    </Root>
  </Loggers>
</Configuration>
EOF
}

write_server_properties() {
  local keystore_password
  keystore_password="$(tr -d '\n' <"$TLS_DIR/server.p12.password")"
  rm -f "$KAFKA_CONF"
  (umask 077 && : >"$KAFKA_CONF")
  cat >"$KAFKA_CONF" <<EOF
# generated by deploy/local/kafka.sh — single-node KRaft (broker+controller)
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DATA

# TLS of the SASL_SSL and MTLS listeners: tls.sh's server certificate and CA
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/server.p12
ssl.keystore.password=$keystore_password
ssl.key.password=$keystore_password
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
# SASL_SSL: SCRAM-SHA-512 only (credentials in the KRaft metadata, set by kafka.sh start)
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# MTLS: a client certificate signed by the CA is required
listener.name.mtls.ssl.client.auth=required

# one broker: every internal topic has a single replica
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true

# keep it light on a 2-core machine
num.network.threads=3
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.segment.bytes=67108864
log.retention.hours=24
log.retention.check.interval.ms=300000
EOF
}

# move_ports: new free ports for every listener (the data stays).
move_ports() {
  local ports
  ports="$(new_ports 4)"
  KAFKA_PORT="$(sed -n 1p <<<"$ports")"
  KAFKA_CONTROLLER_PORT="$(sed -n 2p <<<"$ports")"
  KAFKA_SASL_SSL_PORT="$(sed -n 3p <<<"$ports")"
  KAFKA_MTLS_PORT="$(sed -n 4p <<<"$ports")"
}

# fresh_ports: choose new free ports and forget any old data/cluster id.
fresh_ports() {
  move_ports
  KAFKA_CLUSTER_ID=""
  if [[ -d "$KAFKA_DATA" ]]; then
    log "discarding old Kafka data dir $KAFKA_DATA"
    rm -rf "$KAFKA_DATA"
  fi
}

# choose_ports: reuse the saved ports + data if possible, else start fresh.
choose_ports() {
  load_saved_env
  if [[ -z "$KAFKA_PORT" || -z "$KAFKA_CONTROLLER_PORT" || -z "$KAFKA_CLUSTER_ID" ]]; then
    log "no previous Kafka state: choosing free ports"
    fresh_ports
  elif [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    log "Kafka data dir missing or unformatted: choosing free ports and formatting anew"
    fresh_ports
  elif [[ "$SAVED_KAFKA_VERSION" != "$KAFKA_VERSION" ]]; then
    log "Kafka data was written by $SAVED_KAFKA_VERSION, now running $KAFKA_VERSION: formatting anew"
    fresh_ports
  else
    if ! has_secure_ports; then
      # kafka.env from before the SASL_SSL and mTLS listeners: the old ports and data stay.
      local ports
      ports="$(new_ports 2)"
      KAFKA_SASL_SSL_PORT="$(sed -n 1p <<<"$ports")"
      KAFKA_MTLS_PORT="$(sed -n 2p <<<"$ports")"
      log "adding the SASL_SSL (127.0.0.1:$KAFKA_SASL_SSL_PORT) and mTLS (127.0.0.1:$KAFKA_MTLS_PORT) listeners"
    fi
    local p busy=""
    for p in $(all_ports); do
      port_open "$p" && busy="$busy $p"
    done
    if [[ -n "$busy" ]]; then
      # The data stays (operability review C6): the local Redis keeps its streams, and an empty
      # topic behind them would look like a re-created topic to the ingest.
      log "saved port(s)$busy now used by another process: moving to new ports, keeping the data in $KAFKA_DATA"
      move_ports
    else
      log "restarting Kafka with existing data on saved ports $KAFKA_PORT (broker) / $KAFKA_CONTROLLER_PORT (controller) / $KAFKA_SASL_SSL_PORT (SASL_SSL) / $KAFKA_MTLS_PORT (mTLS)"
    fi
  fi
}

format_storage() {
  local home="$1" out
  if [[ -f "$KAFKA_DATA/meta.properties" ]]; then
    return 0
  fi
  if [[ -z "$KAFKA_CLUSTER_ID" ]]; then
    KAFKA_CLUSTER_ID="$(kafka_java "$home" kafka.tools.StorageTool random-uuid | tail -n 1)"
    [[ -n "$KAFKA_CLUSTER_ID" ]] || die "kafka.tools.StorageTool random-uuid printed nothing"
  fi
  log "formatting Kafka storage (cluster id $KAFKA_CLUSTER_ID, --standalone)..."
  mkdir -p "$KAFKA_DATA"
  if ! out="$(kafka_java "$home" kafka.tools.StorageTool format \
    --cluster-id "$KAFKA_CLUSTER_ID" --config "$KAFKA_CONF" --standalone 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "kafka.tools.StorageTool format failed (see above)"
  fi
  log "  $(tail -n 1 <<<"$out")"
}

# broker_started: the broker logged that it is up and its listener accepts.
broker_started() {
  grep -q 'Kafka Server started' "$KAFKA_LOGFILE" 2>/dev/null && port_open "$KAFKA_PORT"
}

fail_start() {
  log "Kafka failed to start: $1"
  log "last lines of $KAFKA_LOGFILE:"
  tail -n 40 "$KAFKA_LOGFILE" >&2 2>/dev/null || true
  if broker_alive; then
    stop_pid "$KAFKA_PIDFILE" kafka 20 "$KAFKA_CONF" || true
  fi
  rm -f "$KAFKA_PIDFILE"
  exit 1
}

do_start() {
  mkdir -p "$KAFKA_DIR"
  load_saved_env

  # Re-adopt our own broker if it runs but lost its pid file.
  if ! broker_alive; then
    rm -f "$KAFKA_PIDFILE"
    local orphan
    if orphan="$(find_pid_by_cmdline java "$KAFKA_CONF")"; then
      log "found running Kafka (pid $orphan) without pid file; adopting it"
      printf '%s\n' "$orphan" >"$KAFKA_PIDFILE"
    fi
  fi

  if broker_alive && [[ -n "$KAFKA_PORT" ]] && ! has_secure_ports; then
    log "the running Kafka (pid $(read_pid "$KAFKA_PIDFILE")) has no SASL_SSL and mTLS listeners (started by an older kafka.sh): restarting it, keeping the data"
    stop_pid "$KAFKA_PIDFILE" kafka "$KAFKA_STOP_TIMEOUT" "$KAFKA_CONF"
  fi

  if broker_alive; then
    [[ -n "$KAFKA_PORT" ]] ||
      die "Kafka runs (pid $(read_pid "$KAFKA_PIDFILE")) but $KAFKA_ENVFILE is missing; run: $0 stop && $0 start"
    if ! port_open "$KAFKA_PORT"; then
      WAIT_FOR_ABORT=broker_alive wait_for "running Kafka (pid $(read_pid "$KAFKA_PIDFILE")) to accept on 127.0.0.1:$KAFKA_PORT" \
        "$KAFKA_START_TIMEOUT" port_open "$KAFKA_PORT" || fail_start "the running broker does not answer"
    fi
    log "Kafka already running (pid $(read_pid "$KAFKA_PIDFILE")) on 127.0.0.1:$KAFKA_PORT"
    print_env
    return 0
  fi

  local home
  home="$(kafka_home)"
  ensure_tls
  choose_ports
  write_log4j_configs
  write_server_properties
  format_storage "$home"
  save_env

  if [[ -f "$KAFKA_LOGFILE" ]]; then
    mv -f "$KAFKA_LOGFILE" "$KAFKA_LOGFILE.1"
  fi
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (SASL_SSL 127.0.0.1:$KAFKA_SASL_SSL_PORT, mTLS 127.0.0.1:$KAFKA_MTLS_PORT, controller 127.0.0.1:$KAFKA_CONTROLLER_PORT), log $KAFKA_LOGFILE"
  local heap_opts="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}" pid
  # Own session (setsid) so the broker outlives the caller's process group;
  # fd 9 (our start lock) must not leak into it.
  # shellcheck disable=SC2086 # heap_opts is a list of JVM flags
  setsid nohup java $heap_opts \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_DIR" \
    -cp "$home/libs/*" kafka.Kafka "$KAFKA_CONF" \
    >>"$KAFKA_LOGFILE" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$KAFKA_PIDFILE"

  WAIT_FOR_ABORT=broker_alive wait_for "Kafka broker on 127.0.0.1:$KAFKA_PORT" "$KAFKA_START_TIMEOUT" broker_started ||
    fail_start "broker did not come up (pid $pid)"
  # Final check through the real admin API (a client round trip).
  local out
  if ! out="$(timeout 60 "$DASHSTREAM_LOCAL_DIR/kafka.sh" tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list 2>&1)"; then
    printf '%s\n' "$out" >&2
    fail_start "TopicCommand --list against 127.0.0.1:$KAFKA_PORT failed"
  fi
  log "Kafka is up (pid $pid): topics: $(tr '\n' ' ' <<<"$out" | sed 's/ *$//')"
  ensure_scram_user "$home"
  port_open "$KAFKA_MTLS_PORT" || fail_start "the mTLS listener 127.0.0.1:$KAFKA_MTLS_PORT does not accept"
  print_env
}

# sasl_login_works: a client logs in on the SASL_SSL listener (SCRAM-SHA-512, current password)
# and lists the topics.
sasl_login_works() {
  (timeout 30 "$DASHSTREAM_LOCAL_DIR/kafka.sh" tool org.apache.kafka.tools.TopicCommand     --bootstrap-server "127.0.0.1:$KAFKA_SASL_SSL_PORT" --command-config "$KAFKA_SASL_CLIENT_CONF" --list)
}

# ensure_scram_user HOME: the SCRAM-SHA-512 credential of $KAFKA_SASL_USER holds the current
# password (set through the plaintext listener only if a login fails: restarts are quick), and
# a SASL_SSL login works. The password goes in files (mode 0600), never on a command line.
ensure_scram_user() {
  local home="$1" password add_config="$KAFKA_DIR/scram-credential.properties" out
  password="$(sasl_password)"
  rm -f "$KAFKA_SASL_CLIENT_CONF"
  (umask 077 && : >"$KAFKA_SASL_CLIENT_CONF")
  cat >"$KAFKA_SASL_CLIENT_CONF" <<EOF
# generated by deploy/local/kafka.sh: the SASL_SSL login check of kafka.sh start
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SASL_USER" password="$password";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
  if sasl_login_works >/dev/null 2>&1; then
    log "SASL_SSL login of $KAFKA_SASL_USER works (credential already set)"
    return 0
  fi
  log "setting the SCRAM-SHA-512 credential of $KAFKA_SASL_USER"
  (umask 077 && printf 'SCRAM-SHA-512=iterations=8192,password=%s\n' "$password" >"$add_config")
  if ! out="$( (timeout 60 "$DASHSTREAM_LOCAL_DIR/kafka.sh" tool kafka.admin.ConfigCommand     --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter --add-config-file "$add_config"     --entity-type users --entity-name "$KAFKA_SASL_USER") 2>&1)"; then
    rm -f "$add_config"
    printf '%s\n' "${out//"$password"/<password>}" >&2
    fail_start "kafka.admin.ConfigCommand could not set the SCRAM credential of $KAFKA_SASL_USER"
  fi
  rm -f "$add_config"
  WAIT_FOR_ABORT=broker_alive wait_for "a SASL_SSL (SCRAM-SHA-512) login as $KAFKA_SASL_USER on 127.0.0.1:$KAFKA_SASL_SSL_PORT" \
    "$KAFKA_START_TIMEOUT" sasl_login_works || {
    sasl_login_works >&2 || true
    fail_start "no SASL_SSL login on 127.0.0.1:$KAFKA_SASL_SSL_PORT"
  }
}

cmd_start() {
  with_lock kafka do_start
}

cmd_stop() {
  with_lock kafka stop_pid "$KAFKA_PIDFILE" kafka "$KAFKA_STOP_TIMEOUT" "$KAFKA_CONF"
}

cmd_status() {
  load_saved_env
  if is_running; then
    log "Kafka running (pid $(read_pid "$KAFKA_PIDFILE")) on 127.0.0.1:$KAFKA_PORT (SASL_SSL ${KAFKA_SASL_SSL_PORT:-none}, mTLS ${KAFKA_MTLS_PORT:-none}), data $KAFKA_DATA"
    return 0
  elif broker_alive; then
    log "Kafka process alive (pid $(read_pid "$KAFKA_PIDFILE")) but 127.0.0.1:${KAFKA_PORT:-?} does not answer"
    return 1
  fi
  log "Kafka not running"
  return 3
}

cmd_env() {
  load_saved_env
  [[ -n "$KAFKA_PORT" ]] || die "Kafka was never started here (no $KAFKA_ENVFILE); run: $0 start"
  is_running || log "warning: Kafka is not running (run: $0 start)"
  has_secure_ports || die "Kafka was started without the SASL_SSL and mTLS listeners (older kafka.sh); run: $0 start"
  print_env
}

cmd_tool() {
  (($# >= 1)) || die "usage: $0 tool MAIN_CLASS [ARGS...]"
  local home
  home="$(kafka_home)"
  mkdir -p "$KAFKA_DIR"
  [[ -f "$KAFKA_TOOLS_LOG4J" ]] || write_log4j_configs
  kafka_java "$home" "$@"
}

cmd_topics() {
  load_saved_env
  [[ -n "$KAFKA_PORT" ]] || die "Kafka was never started here; run: $0 start"
  cmd_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"
}

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|restart|status|env|logs
       $0 topics ARGS...            (org.apache.kafka.tools.TopicCommand --bootstrap-server <ours> ARGS)
       $0 tool MAIN_CLASS ARGS...   (java -cp '<kafka>/libs/*' MAIN_CLASS ARGS)
EOF
  exit 2
}

main() {
  local cmd="${1:-}"
  shift || true
  ensure_state_dir
  case "$cmd" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop && cmd_start ;;
  status) cmd_status ;;
  env) cmd_env ;;
  logs) tail -n "${LINES:-100}" "$KAFKA_LOGFILE" ;;
  tool) cmd_tool "$@" ;;
  topics) cmd_topics "$@" ;;
  *) usage ;;
  esac
}

main "$@"
