//! `GATEWAY_JWT_JWKS_URL` against a key server on loopback (security issue §1): the gateway
//! is not ready until it has fetched a good JWKS document; a key published later is picked
//! up by the background refresh and a withdrawn one stops working; a fetch that fails (an HTTP
//! error, a document over GATEWAY_JWT_JWKS_MAX_BYTES or with more than
//! GATEWAY_JWT_JWKS_MAX_KEYS keys, not JSON) keeps the last good keys and is counted; tokens
//! naming unknown `kid`s wake the refresher but never make it fetch more than once per
//! interval.

mod common;
use base64::Engine as _;
use common::*;
use dashstream_testkit::{http_get, metric_sum, parse_metrics};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HS256 secret of key `kid`.
fn secret(kid: &str) -> Vec<u8> {
    format!("jwks-url-test-secret-of-{kid}-0123456789").into_bytes()
}

fn jwk(kid: &str) -> serde_json::Value {
    json!({
        "kty": "oct",
        "kid": kid,
        "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret(kid)),
    })
}

fn jwks(kids: &[&str]) -> String {
    json!({"keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>()}).to_string()
}

/// A token for every tenant, signed with `kid`'s secret.
fn token(kid: &str) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.to_string());
    let claims =
        json!({"sub": "jwks", "exp": jsonwebtoken::get_current_timestamp() + 600, "tenants": "*"});
    encode(
        &h,
        &claims,
        &EncodingKey::from_secret(&secret(kid)).unwrap(),
    )
    .unwrap()
}

/// A key server on loopback: answers every request with `status` and `body`, counting them.
#[derive(Clone)]
struct KeyServer {
    addr: String,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
}

/// One request on `c`: answered with `srv`'s answer, counted.
async fn answer<C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(srv: KeyServer, mut c: C) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    srv.requests.fetch_add(1, Ordering::SeqCst);
    let (status, body) = srv.answer.lock().unwrap().clone();
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.write_all(resp.as_bytes()).await;
    let _ = c.shutdown().await;
}

impl KeyServer {
    /// Over TLS with the local server certificate (`deploy/local/tls.sh`: 127.0.0.1).
    async fn start_tls(status: u16, body: String) -> Self {
        let s = dashstream_testkit::secure_services();
        let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(
            &std::fs::read(s.file("server.pem")).unwrap(),
            &std::fs::read(s.file("server.key")).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_native_tls::TlsAcceptor::from(
            tokio_native_tls::native_tls::TlsAcceptor::new(identity).unwrap(),
        );
        Self::serve(status, body, Some(acceptor)).await
    }

    async fn start(status: u16, body: String) -> Self {
        Self::serve(status, body, None).await
    }

    /// Plain HTTP, or HTTPS through `tls`.
    async fn serve(status: u16, body: String, tls: Option<tokio_native_tls::TlsAcceptor>) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let srv = Self {
            addr: l.local_addr().unwrap().to_string(),
            answer: Arc::new(Mutex::new((status, body))),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        let s = srv.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(s, c).await,
                        // A client that does not trust the certificate ends the handshake.
                        Some(a) => {
                            if let Ok(c) = a.accept(c).await {
                                answer(s, c).await;
                            }
                        }
                    }
                });
            }
        });
        srv
    }

    fn set(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The upgrade's status with `token` (101 when it was accepted).
async fn status_with(addr: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    match connect_with(addr, "from=latest", &[("authorization", &auth)]).await {
        Ok(c) => {
            c.close().await;
            101
        }
        Err((status, _)) => status,
    }
}

async fn fetches(ops: &str, result: &str) -> f64 {
    let (_, text) = http_get(ops, "/metrics").await.unwrap();
    metric_sum(
        &parse_metrics(&text),
        "dashstream_gateway_jwks_fetches_total",
        &[("result", result)],
    )
}

async fn gauge(ops: &str, name: &str) -> f64 {
    let (_, text) = http_get(ops, "/metrics").await.unwrap();
    metric_sum(&parse_metrics(&text), name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_from_a_url_are_fetched_before_ready_rotated_and_kept_through_bad_fetches() {
    deadline(180, async {
        let sys = System::new("jwks-url", 1, None).await;
        let keys = KeyServer::start(503, "down".into()).await;
        let ops = format!("127.0.0.1:{}", dashstream_testkit::free_port());
        let flags = [
            "--auth=jwt".to_string(),
            format!("--jwt-jwks-url={}", keys.url()),
            "--jwt-jwks-refresh-secs=1".into(),
            "--jwt-jwks-max-bytes=4096".into(),
            "--jwt-jwks-max-keys=4".into(),
            format!("--ops-listen={ops}"),
        ];
        let start = {
            let sys = sys.clone();
            tokio::spawn(async move {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                sys.gateway("jwks-g1", &flags).await
            })
        };
        // The key server is down: the gateway keeps trying and is not ready.
        let o = ops.clone();
        wait_for("two failed fetches", Duration::from_secs(30), || {
            let o = o.clone();
            async move { (http_get(&o, "/metrics").await.ok().is_some()).then_some(()) }
        })
        .await;
        wait_for("two failed fetches", Duration::from_secs(30), || {
            let o = ops.clone();
            async move { (fetches(&o, "error").await >= 2.0).then_some(()) }
        })
        .await;
        assert_eq!(http_get(&ops, "/readyz").await.unwrap().0, 503);
        assert!(!start.is_finished(), "ready without keys");
        keys.set(200, jwks(&["k1"]));
        let gw = tokio::time::timeout(Duration::from_secs(30), start)
            .await
            .expect("ready once the keys are served")
            .unwrap();
        assert_eq!(status_with(&gw.addr, &token("k1")).await, 101);
        assert_eq!(status_with(&gw.addr, &token("k2")).await, 401);
        assert_eq!(gauge(&ops, "dashstream_gateway_jwks_keys").await, 1.0);
        assert!(
            gauge(
                &ops,
                "dashstream_gateway_jwks_last_success_timestamp_seconds"
            )
            .await
                > 0.0
        );

        // Rotation: k2 published, k1 withdrawn; the refresh picks it up.
        keys.set(200, jwks(&["k2"]));
        let addr = gw.addr.clone();
        wait_for("k2 accepted", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { (status_with(&addr, &token("k2")).await == 101).then_some(()) }
        })
        .await;
        assert_eq!(
            status_with(&gw.addr, &token("k1")).await,
            401,
            "k1 withdrawn"
        );

        // Each bad answer is counted and leaves k2 in use.
        let big = format!(
            "{{\"keys\":[{}],\"pad\":\"{}\"}}",
            jwk("k3"),
            "x".repeat(8192)
        );
        let bad = [
            ("an HTTP error", 500, "oops".to_string()),
            ("over GATEWAY_JWT_JWKS_MAX_BYTES", 200, big),
            (
                "over GATEWAY_JWT_JWKS_MAX_KEYS",
                200,
                jwks(&["k3", "k4", "k5", "k6", "k7"]),
            ),
            ("not JSON", 200, "<html>".to_string()),
            ("no key", 200, "{\"keys\":[]}".to_string()),
        ];
        for (what, status, body) in bad {
            let before = fetches(&ops, "error").await;
            keys.set(status, body);
            let o = ops.clone();
            wait_for(what, Duration::from_secs(30), || {
                let o = o.clone();
                async move { (fetches(&o, "error").await > before).then_some(()) }
            })
            .await;
            assert_eq!(
                status_with(&gw.addr, &token("k2")).await,
                101,
                "{what}: the last good keys stay in use"
            );
            assert_eq!(status_with(&gw.addr, &token("k3")).await, 401, "{what}");
            assert_eq!(gauge(&ops, "dashstream_gateway_jwks_keys").await, 1.0);
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kids_wake_the_refresher_at_most_once_per_interval() {
    deadline(120, async {
        let sys = System::new("jwks-kid", 1, None).await;
        let keys = KeyServer::start(200, jwks(&["k1"])).await;
        // No scheduled refresh during the test: every fetch after the first is a kid miss.
        let flags = [
            "--auth=jwt".to_string(),
            format!("--jwt-jwks-url={}", keys.url()),
            "--jwt-jwks-refresh-secs=3600".into(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let gw = sys.gateway("jwks-g2", &flags).await;
        assert_eq!(keys.requests(), 1);
        // A key published after the gateway fetched: the first token naming it is refused
        // and wakes the refresher, which fetches once the minimum interval has passed.
        keys.set(200, jwks(&["k1", "k9"]));
        assert_eq!(status_with(&gw.addr, &token("k9")).await, 401);
        // A storm of unknown kids meanwhile changes nothing.
        for i in 0..40 {
            assert_eq!(
                status_with(&gw.addr, &token(&format!("random-{i}"))).await,
                401
            );
        }
        let addr = gw.addr.clone();
        wait_for("k9 accepted", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { (status_with(&addr, &token("k9")).await == 101).then_some(()) }
        })
        .await;
        assert_eq!(
            keys.requests(),
            2,
            "one fetch at start, one for all the unknown kids"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_https_are_fetched_only_with_the_ca_that_signed_the_server() {
    deadline(60, async {
        use dashstream_gateway::auth::{Authenticator, JwksUrl, JwtSettings};
        let s = dashstream_testkit::secure_services();
        let keys = KeyServer::start_tls(200, jwks(&["k1", "k2"])).await;
        let auth = |ca: &str| {
            Authenticator::load(JwtSettings {
                jwks_url: Some(JwksUrl {
                    url: format!("https://{}/jwks.json", keys.addr).parse().unwrap(),
                    ca_file: Some(s.file(ca)),
                    refresh: Duration::from_secs(300),
                    timeout: Duration::from_secs(5),
                    max_bytes: 65536,
                    max_keys: 8,
                }),
                tenants_claim: "tenants".into(),
                ..Default::default()
            })
            .unwrap()
        };
        let trusted = auth("ca.pem");
        assert_eq!(trusted.fetch_keys().await, Ok(2));
        assert!(trusted.verify(&token("k2")).is_ok());
        let rogue = auth("rogue-ca.pem");
        let e = rogue.fetch_keys().await.unwrap_err();
        assert!(e.contains("cannot fetch"), "{e}");
        assert_eq!(rogue.remote_keys(), 0);
        assert!(rogue.verify(&token("k1")).is_err());
        assert_eq!(
            keys.requests(),
            1,
            "the untrusted handshake never sent the request"
        );
    })
    .await;
}

#[test]
fn a_jwks_url_over_plain_http_off_loopback_is_refused() {
    use clap::Parser;
    let args = |url: &str| {
        dashstream_gateway::GatewayArgs::try_parse_from([
            "gateway",
            "--kafka-topic=t",
            "--auth=jwt",
            &format!("--jwt-jwks-url={url}"),
        ])
        .unwrap()
        .validate()
    };
    let e = args("http://keys.example.com/jwks.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GATEWAY_JWT_JWKS_URL") && e.contains("https"),
        "{e}"
    );
    let e = args("ftp://127.0.0.1/jwks.json").unwrap_err().to_string();
    assert!(e.contains("GATEWAY_JWT_JWKS_URL"), "{e}");
    assert!(args("http://127.0.0.1:1/jwks.json").is_ok());
    assert!(args("https://keys.example.com/jwks.json").is_ok());
}
