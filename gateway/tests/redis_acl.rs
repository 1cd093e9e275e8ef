//! Both tiers over the local Redis's TLS port as their least-privilege ACL users
//! (`deploy/local/redis.sh`, docs/SECURITY.md): the ingest as `dashstream-ingest` writes every
//! event, the gateway as the read-only `dashstream-gateway` serves them live and from history,
//! each user is refused what it does not need (the gateway any write, the ingest any key
//! outside its prefix or an administrative command), and a wrong password or an untrusted CA
//! stops either tier at start-up naming the setting, never showing the password.

mod common;
use common::*;
use dashstream::redis_config::RedisArgs;
use dashstream_testkit::{secure_services, SecureServices};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The TLS URL of the local Redis as `user` (the password comes from a file).
fn tls_url(s: &SecureServices, user: &str) -> String {
    s.redis_tls_url
        .replacen("rediss://", &format!("rediss://{user}@"), 1)
}

fn password_file(s: &SecureServices, tier: &str) -> PathBuf {
    s.file(&format!("passwords/redis-{tier}.password"))
}

/// The password and CA flags of a tier (its URL is [`tls_url`] of its user).
fn tls_flags(s: &SecureServices, password: &Path, ca: &str) -> Vec<String> {
    vec![
        format!("--redis-password-file={}", password.display()),
        format!("--redis-tls-ca-file={}", s.file(ca).display()),
    ]
}

/// A connection as `dashstream-<tier>`, opened by the tiers' own settings code.
async fn connect_as(s: &SecureServices, tier: &str) -> dashstream::redis_config::RedisConn {
    RedisArgs {
        url: tls_url(s, &format!("dashstream-{tier}")),
        key_prefix: "acl".into(),
        password_file: Some(password_file(s, tier)),
        tls_ca_file: Some(s.file("ca.pem")),
        tls_cert_file: None,
        tls_key_file: None,
        command_timeout_ms: 5000,
    }
    .validate()
    .expect("settings")
    .connect()
    .await
    .expect("connect over TLS")
}

/// The error Redis gives `cmd`, which must be a refusal by the ACL.
async fn assert_noperm(c: &mut dashstream::redis_config::RedisConn, who: &str, cmd: &redis::Cmd) {
    let r: redis::RedisResult<redis::Value> = cmd.query_async(c).await;
    match r {
        Err(e)
            if matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
            ) => {}
        other => panic!("{who}: {cmd:?} must be refused by the ACL, got {other:?}"),
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_tiers_work_over_tls_as_their_least_privilege_users() {
    deadline(180, async {
        let s = secure_services();
        let mut sys = System::new("acl", 2, None).await;
        // The ACL users may only touch keys under `acl:`.
        sys.prefix = format!("acl:{}", sys.topic);
        let ingest_flags = tls_flags(&s, &password_file(&s, "ingest"), "ca.pem");
        let gateway_flags = tls_flags(&s, &password_file(&s, "gateway"), "ca.pem");
        let as_user = |tier: &str| System {
            redis_url: tls_url(&s, &format!("dashstream-{tier}")),
            ..sys.clone()
        };
        let gw = as_user("gateway")
            .gateway("acl-g1", &refs(&gateway_flags))
            .await;
        let ingest = as_user("ingest").ingest(&refs(&ingest_flags)).await;
        let mut live = connect(&gw.addr, "from=latest").await.expect("upgrade");
        let mut live_rx = Received::default();
        match live.next(Duration::from_secs(10)).await {
            Some(f @ Frame::Welcome { .. }) => live_rx.take(&f),
            other => panic!("expected welcome, got {other:?}"),
        }
        let report = sys.produce(sys.produce_options(600, Some(600.0))).await;
        let want = expected(&report.deliveries);
        assert!(!want.is_empty());
        // Live, through the tail script (EVALSHA_RO) ...
        read_until(&mut live, &mut live_rx, &want, Duration::from_secs(60)).await;
        // ... and from history (MULTI, XRANGE) on the read-only pool.
        let mut hist = connect(&gw.addr, "from=earliest").await.expect("upgrade");
        let mut hist_rx = Received::default();
        read_until(&mut hist, &mut hist_rx, &want, Duration::from_secs(60)).await;
        for (name, rx) in [("live", &live_rx), ("history", &hist_rx)] {
            assert_eq!(rx.duplicates, 0, "{name}: duplicates");
            assert!(rx.gaps.is_empty(), "{name}: gaps {:?}", rx.gaps);
            assert_eq!(rx.events, want, "{name}: exactly the produced events");
        }
        // No command either tier ran was refused on the way (a rule missing from the ACL
        // shows as a Redis error, retried, even when the data got through another way).
        let metrics = |addr: String| async move {
            let (status, text) = dashstream_testkit::http_get(&addr, "/metrics")
                .await
                .unwrap();
            assert_eq!(status, 200);
            dashstream_testkit::parse_metrics(&text)
        };
        let gm = metrics(gw.addr.clone()).await;
        let im = metrics(ingest.addr.clone()).await;
        use dashstream_testkit::metric_sum;
        assert!(gm
            .iter()
            .any(|m| m.name == "dashstream_gateway_redis_errors_total"));
        assert_eq!(
            metric_sum(&gm, "dashstream_gateway_redis_errors_total", &[]),
            0.0,
            "gateway Redis errors"
        );
        assert!(
            metric_sum(&im, "dashstream_ingest_events_written_total", &[]) >= want.len() as f64
        );
        assert_eq!(
            metric_sum(
                &im,
                "dashstream_ingest_infra_errors_total",
                &[("system", "redis")]
            ),
            0.0,
            "ingest Redis errors"
        );
        gw.shutdown().await;
        ingest.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_is_refused_what_its_tier_does_not_need() {
    deadline(60, async {
        let s = secure_services();
        let key = format!("acl:{}", unique("acl-refused"));
        let mut ingest = connect_as(&s, "ingest").await;
        // The ingest's user writes its own keys ...
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("f")
            .arg("v")
            .query_async(&mut ingest)
            .await
            .expect("the ingest's user writes under its prefix");
        // ... and nothing else.
        let outside = unique("outside-acl");
        let mut xadd_outside = redis::cmd("XADD");
        xadd_outside.arg(&outside).arg("*").arg("f").arg("v");
        assert_noperm(&mut ingest, "ingest", &xadd_outside).await;
        assert_noperm(&mut ingest, "ingest", &redis::cmd("FLUSHALL")).await;
        let mut set_config = redis::cmd("CONFIG");
        set_config
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("allkeys-lru");
        assert_noperm(&mut ingest, "ingest", &set_config).await;
        let mut keys = redis::cmd("KEYS");
        keys.arg("*");
        assert_noperm(&mut ingest, "ingest", &keys).await;

        let mut gateway = connect_as(&s, "gateway").await;
        let len: usize = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut gateway)
            .await
            .expect("the gateway's user reads under the prefix");
        assert_eq!(len, 1);
        // Every write is refused, directly or through a script.
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&key).arg("*").arg("f").arg("v");
        assert_noperm(&mut gateway, "gateway", &xadd).await;
        let mut set = redis::cmd("SET");
        set.arg(&key).arg("x");
        assert_noperm(&mut gateway, "gateway", &set).await;
        let mut del = redis::cmd("UNLINK");
        del.arg(&key);
        assert_noperm(&mut gateway, "gateway", &del).await;
        let mut eval = redis::cmd("EVAL");
        eval.arg("return redis.call('XADD', KEYS[1], '*', 'f', 'v')")
            .arg(1)
            .arg(&key);
        assert_noperm(&mut gateway, "gateway", &eval).await;
        let mut eval_ro = redis::cmd("EVAL_RO");
        eval_ro
            .arg("return redis.call('XADD', KEYS[1], '*', 'f', 'v')")
            .arg(1)
            .arg(&key);
        let r: redis::RedisResult<redis::Value> = eval_ro.query_async(&mut gateway).await;
        assert!(r.is_err(), "a read-only script cannot write: {r:?}");
        assert_eq!(
            redis::cmd("XLEN")
                .arg(&key)
                .query_async::<usize>(&mut gateway)
                .await
                .unwrap(),
            1,
            "nothing was written as the gateway"
        );
        // Nor may it read outside the prefix.
        let mut xlen_outside = redis::cmd("XLEN");
        xlen_outside.arg(&outside);
        assert_noperm(&mut gateway, "gateway", &xlen_outside).await;
        let _: () = redis::cmd("UNLINK")
            .arg(&key)
            .query_async(&mut ingest)
            .await
            .unwrap();
    })
    .await;
}

/// Runs the gateway binary with `flags` until it exits (at most 30 s): its code and stderr.
async fn gateway_exit(s: &SecureServices, sys: &System, flags: &[String]) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("RUST_LOG", "info")
        .arg(format!("--kafka-topic={}", sys.topic))
        .arg(format!("--redis-key-prefix={}", sys.prefix))
        .arg(format!("--redis-url={}", tls_url(s, "dashstream-gateway")))
        .arg(format!(
            "--listen=127.0.0.1:{}",
            dashstream_testkit::free_port()
        ))
        .args(flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = async {
        use tokio::io::AsyncReadExt;
        let (mut a, mut b) = (String::new(), String::new());
        let _ = tokio::join!(out.read_to_string(&mut a), err.read_to_string(&mut b));
        let status = child.wait().await.expect("wait");
        (status.code(), format!("{a}{b}"))
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the gateway exits by itself within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_ca_stops_both_tiers_naming_the_setting() {
    deadline(150, async {
        let s = secure_services();
        let mut sys = System::new("acl-refused", 1, None).await;
        sys.prefix = format!("acl:{}", sys.topic);
        let wrong = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("wrong-redis-password"));
        std::fs::write(&wrong, "not-the-password\n").unwrap();
        for tier in ["ingest", "gateway"] {
            let cases = [
                (
                    "a wrong password",
                    tls_flags(&s, &wrong, "ca.pem"),
                    "REDIS_PASSWORD_FILE",
                ),
                (
                    "a CA that did not sign the server's certificate",
                    tls_flags(&s, &password_file(&s, tier), "rogue-ca.pem"),
                    "REDIS_TLS_CA_FILE",
                ),
            ];
            for (what, flags, setting) in cases {
                let what = format!("{tier}, {what}");
                let text = if tier == "gateway" {
                    let (code, text) = gateway_exit(&s, &sys, &flags).await;
                    assert_eq!(code, Some(64), "{what}: exit 64; output:\n{text}");
                    text
                } else {
                    ingest_refusal(&s, &sys, &flags).await
                };
                assert!(
                    text.contains(setting),
                    "{what}: must name {setting}:\n{text}"
                );
                assert!(
                    !text.contains("not-the-password"),
                    "never the password: {text}"
                );
            }
        }
        let _ = std::fs::remove_file(wrong);
    })
    .await;
}

/// Runs the ingest (library entry point) with `flags`: it must stop by itself with a setting
/// to fix; the message.
async fn ingest_refusal(s: &SecureServices, sys: &System, flags: &[String]) -> String {
    let as_ingest = System {
        redis_url: tls_url(s, "dashstream-ingest"),
        ..sys.clone()
    };
    let settings = as_ingest.ingest_settings("127.0.0.1:0", &refs(flags));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = dashstream_ingest::run(settings, prometheus::Registry::new(), listener, stop);
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the ingest stops by itself within 30 s")
        .expect_err("the ingest must refuse to run");
    assert!(err.is_config(), "a setting to fix (exit 64): {err}");
    err.to_string()
}
