#!/usr/bin/env bash
# deploy/local/redis-acl.sh — the least-privilege Redis ACL users of the local servers
# (docs/SECURITY.md, "Redis"). Sourced by redis.sh (the single server's TLS port) and
# redis-cluster.sh (every cluster node); the same rules are the ones the docs give for
# production, and gateway/tests/redis_acl.rs and gateway/tests/cluster.rs run both tiers
# as these users (a command a tier runs that is missing here fails those tests).
#
#   ACL_INGEST / ACL_GATEWAY                   a single server
#   ACL_CLUSTER_INGEST / ACL_CLUSTER_GATEWAY   a cluster node: the same, plus the cluster
#                                              client's commands and the shard channels
#   acl_password_hash TLS_DIR TIER             the SHA-256 of redis-TIER.password (tls.sh)
# (The variables are used by the scripts that source this file.)
# shellcheck shell=bash disable=SC2034

# The key pattern of the local ACL users: a deployment's prefix, `<prefix>:*`.
ACL_KEYS="acl:*"
# Connection set-up, as redis-rs sends it.
ACL_CONNECT="+ping +hello +auth +client|setname +select +info"
# The ingest: its scripts (ingest/src/store.rs), every command they run, the retention sampler.
ACL_INGEST="resetkeys ~$ACL_KEYS resetchannels -@all $ACL_CONNECT +evalsha +eval +script|load +multi +exec +discard +xadd +xtrim +xrange +xrevrange +xlen +xinfo|stream +hget +hmget +hset +sadd +smembers +exists +unlink"
# The gateway: reads only, keys readable but never writable (%R), its script by EVALSHA_RO.
ACL_GATEWAY="resetkeys %R~$ACL_KEYS resetchannels -@all $ACL_CONNECT +config|get +evalsha_ro +eval_ro +multi +exec +discard +xread +xrange +xrevrange +xlen +xinfo|stream +hget +smembers +exists"
# On a cluster: the client learns the slots (CLUSTER SLOTS) and follows a migrating slot
# (ASKING); the ingest's write script publishes on the partition's shard channel, named like
# its stream (SPUBLISH), and the gateway's tail subscribes to those channels (SSUBSCRIBE).
ACL_CLUSTER_CLIENT="+cluster|slots +asking"
ACL_CLUSTER_INGEST="$ACL_INGEST $ACL_CLUSTER_CLIENT &$ACL_KEYS +spublish"
ACL_CLUSTER_GATEWAY="$ACL_GATEWAY $ACL_CLUSTER_CLIENT &$ACL_KEYS +ssubscribe +sunsubscribe"

# acl_password_hash TLS_DIR TIER: the SHA-256 of the tier's password, as an ACL `#` rule takes it.
acl_password_hash() {
  printf '%s' "$(tr -d '\n' <"$1/passwords/redis-$2.password")" | sha256sum | cut -d' ' -f1
}
