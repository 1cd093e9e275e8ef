//! The start-up checks of the Redis server (gateway/src/preflight.rs), against real servers:
//! the shared Redis passes; a private `redis-server` with an evicting `maxmemory-policy`
//! stops the gateway (library and binary, non-zero exit, a message naming the policy); a
//! user the ACL forbids `CONFIG` starts with a warning. (A server older than 7.0 cannot be run
//! here: that decision is unit-tested in preflight.rs.)

mod common;
use common::*;
use dashstream_gateway::preflight;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn manager(url: &str) -> dashstream::redis_config::RedisConn {
    dashstream::redis_config::RedisConn::Single(
        redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap())
            .await
            .unwrap(),
    )
}

async fn cmd(url: &str, args: &[&str]) {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&dashstream_testkit::redis_patient())
        .await
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
}

fn settings(redis_url: &str, addr: &str) -> dashstream_gateway::GatewaySettings {
    let args = [
        "gateway".to_string(),
        "--kafka-topic=t".into(),
        format!("--redis-url={redis_url}"),
        format!("--redis-key-prefix={}", unique("preflight")),
        format!("--listen={addr}"),
        "--redis-command-timeout-ms=2000".into(),
    ];
    <dashstream_gateway::GatewayArgs as clap::Parser>::try_parse_from(args)
        .unwrap()
        .validate()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_redis_passes_the_start_up_checks() {
    deadline(30, async {
        let url = dashstream_testkit::services().redis_url;
        let stop = CancellationToken::new();
        preflight::check(manager(&url).await, Duration::from_secs(2), &stop)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_maxmemory_policy_stops_the_gateway() {
    deadline(60, async {
        let redis = RedisServer::start();
        cmd(
            &redis.url(),
            &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        )
        .await;
        let stop = CancellationToken::new();
        let e = preflight::check(manager(&redis.url()).await, Duration::from_secs(2), &stop)
            .await
            .unwrap_err();
        assert!(e.contains("allkeys-lru") && e.contains("noeviction"), "{e}");
        // The library's entry point returns the error instead of serving.
        let addr = format!("127.0.0.1:{}", dashstream_testkit::free_port());
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let r = dashstream_gateway::run(
            settings(&redis.url(), &addr),
            prometheus::Registry::new(),
            listener,
            stop.clone(),
        )
        .await;
        let e = r.expect_err("the gateway must not start on an evicting Redis");
        assert!(e.to_string().contains("allkeys-lru"), "{e}");
        // The binary exits non-zero and says why.
        let addr = format!("127.0.0.1:{}", dashstream_testkit::free_port());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("KAFKA_TOPIC", "t")
            .env("REDIS_URL", redis.url())
            .env("REDIS_KEY_PREFIX", unique("preflight"))
            .env("GATEWAY_LISTEN", &addr)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("the gateway exits by itself")
            .unwrap();
        assert!(!out.status.success(), "{:?}", out.status);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("maxmemory-policy is allkeys-lru"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_config_starts_with_a_warning() {
    deadline(60, async {
        let redis = RedisServer::start();
        // Managed Redis often forbids CONFIG: here an ACL user with everything but @admin.
        cmd(
            &redis.url(),
            &[
                "ACL", "SETUSER", "reader", "on", ">secret", "~*", "&*", "+@all", "-@admin",
            ],
        )
        .await;
        let url = format!("redis://reader:secret@127.0.0.1:{}", redis.port);
        let stop = CancellationToken::new();
        preflight::check(manager(&url).await, Duration::from_secs(2), &stop)
            .await
            .unwrap();
    })
    .await;
}
