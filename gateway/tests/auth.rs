//! `GATEWAY_AUTH=jwt` against the real Kafka, ingest and Redis (security issue §1 and §2):
//! - two tenants' clients on one topic see only their own tenants' events, checked event by
//!   event against an all-tenants client, including after a resume on another replica;
//! - every bad token (missing, expired, wrong key, wrong audience, wrong issuer, `alg: none`,
//!   tampered) is refused with 401 and counted under its reason; a tenant outside the token's
//!   scope gets 403;
//! - the token is taken from `Authorization: Bearer`, the `token.<jwt>` subprotocol or
//!   `access_token`;
//! - a token expiring during a connection ends it with a `reconnect` frame (`token_expired`)
//!   and close 4001, unless an `auth` frame renewed it; a renewal narrower than the
//!   connection's scope closes it with 4003;
//! - a browser `Origin` other than the gateway's own or a listed one gets 403.

mod common;
use common::*;
use dashstream_testkit::{http_get, metric_sum, parse_metrics};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SECRET: &[u8] = b"auth-test-secret-0123456789abcdef";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(tenants: serde_json::Value, exp: u64) -> serde_json::Value {
    json!({"sub": "test", "aud": "dashstream", "iss": "tests", "exp": exp, "tenants": tenants})
}

fn sign(c: &serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn token(tenants: serde_json::Value) -> String {
    sign(&claims(tenants, now() + 600), SECRET)
}

/// A gateway with `GATEWAY_AUTH=jwt` over `sys`, keyed with [`SECRET`].
async fn gateway(sys: &System, name: &str, extra: &[&str]) -> Running {
    let dir = std::env::temp_dir().join(unique("auth-keys"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut args = vec![
        "--auth=jwt".to_string(),
        format!("--jwt-hs256-secret-file={}", secret.display()),
        "--jwt-audience=dashstream".into(),
        "--jwt-issuer=tests".into(),
        "--jwt-leeway-secs=2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sys.gateway(name, &args).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Reads `c` until it has `want` events (or `max` frames passed), keyed (partition, offset,
/// index) -> tenant; panics on an event seen twice. Returns them and the last cursor.
async fn read_events(
    c: &mut RawClient,
    want: usize,
    seen: &mut BTreeMap<(i64, i64, u64), String>,
) -> String {
    let mut cursor = String::new();
    while seen.len() < want {
        let v = c
            .next_json(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("stream ended at {} of {want} events", seen.len()));
        if let Some(k) = v["cursor"].as_str() {
            cursor = k.to_string();
        }
        if v["type"] == "events" {
            for e in v["events"].as_array().unwrap() {
                let key = (
                    e["partition"].as_i64().unwrap(),
                    e["offset"].as_i64().unwrap(),
                    e["index"].as_u64().unwrap(),
                );
                let tenant = e["tenant"].as_str().unwrap().to_string();
                assert!(
                    seen.insert(key, tenant).is_none(),
                    "event {key:?} delivered twice"
                );
            }
        }
    }
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_see_only_their_events_across_replicas_and_bad_tokens_are_refused() {
    deadline(240, async {
        let sys = System::new("auth", 2, None).await;
        let _ingest = sys.ingest(&[]).await;
        let report = sys.produce(sys.produce_options(800, None)).await;
        let total: u64 = report.deliveries.iter().map(|d| u64::from(d.events)).sum();
        sys.wait_streams().await;
        let g1 = gateway(&sys, "g1", &[]).await;
        let g2 = gateway(&sys, "g2", &[]).await;

        // The truth: everything, by a token granting every tenant (from the subprotocol, as a
        // browser sends it).
        let all_token = token(json!("*"));
        let proto = format!("dashstream, token.{all_token}");
        let mut all = RawClient::connect(
            &g1.addr,
            "from=earliest",
            &[("sec-websocket-protocol", &proto)],
        )
        .await
        .expect("all tenants");
        let mut truth = BTreeMap::new();
        read_events(&mut all, total as usize, &mut truth).await;
        let tenants: BTreeSet<&String> = truth.values().collect();
        assert!(
            tenants.len() >= 3,
            "the producer spreads tenants: {tenants:?}"
        );
        let subset = |allowed: &[&str]| -> BTreeMap<(i64, i64, u64), String> {
            truth
                .iter()
                .filter(|(_, t)| allowed.contains(&t.as_str()))
                .map(|(k, t)| (*k, t.clone()))
                .collect()
        };

        // Tenant A through the Authorization header; it resumes half-way on the other replica.
        let a_token = token(json!(["tenant-0"]));
        let want_a = subset(&["tenant-0"]);
        let mut a = RawClient::connect(
            &g1.addr,
            "from=earliest",
            &[("authorization", &bearer(&a_token))],
        )
        .await
        .expect("tenant A");
        let mut got_a = BTreeMap::new();
        let cursor = read_events(&mut a, want_a.len() / 2, &mut got_a).await;
        drop(a);
        let mut a = RawClient::connect(
            &g2.addr,
            &format!("from={cursor}"),
            &[("authorization", &bearer(&a_token))],
        )
        .await
        .expect("tenant A resumes on g2");
        read_events(&mut a, want_a.len(), &mut got_a).await;
        assert_eq!(got_a, want_a, "tenant A gets exactly tenant-0's events");

        // Tenant B (two tenants) through access_token, narrowing to one of them.
        let b_token = token(json!(["tenant-1", "tenant-2"]));
        let want_b = subset(&["tenant-1", "tenant-2"]);
        let mut b = RawClient::connect(
            &g2.addr,
            &format!("from=earliest&access_token={b_token}"),
            &[],
        )
        .await
        .expect("tenant B");
        let mut got_b = BTreeMap::new();
        read_events(&mut b, want_b.len(), &mut got_b).await;
        assert_eq!(
            got_b, want_b,
            "tenant B gets exactly tenant-1's and tenant-2's events"
        );
        let want_b1 = subset(&["tenant-1"]);
        let mut b1 = RawClient::connect(
            &g1.addr,
            &format!("from=earliest&tenant=tenant-1&access_token={b_token}"),
            &[],
        )
        .await
        .expect("tenant B narrowed");
        let mut got_b1 = BTreeMap::new();
        read_events(&mut b1, want_b1.len(), &mut got_b1).await;
        assert_eq!(got_b1, want_b1);

        // Widening is refused, not answered with an empty stream.
        let (status, body) = RawClient::connect(
            &g1.addr,
            "from=earliest&tenant=tenant-0,tenant-1",
            &[("authorization", &bearer(&a_token))],
        )
        .await
        .err()
        .expect("a tenant outside the token");
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("FORBIDDEN") && body.contains("tenant-1"),
            "{body}"
        );

        // Every bad token: 401 and its reason counted.
        let before = parse_metrics(&http_get(&g1.addr, "/metrics").await.unwrap().1);
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let good = claims(json!(["tenant-0"]), now() + 600);
        let parts: Vec<String> = a_token.split('.').map(str::to_string).collect();
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("another-service");
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("someone-else");
        let mut widened = good.clone();
        widened["tenants"] = json!("*");
        let cases: Vec<(&str, Option<String>)> = vec![
            ("missing", None),
            (
                "expired",
                Some(sign(&claims(json!(["tenant-0"]), now() - 120), SECRET)),
            ),
            (
                "bad_signature",
                Some(sign(&good, b"another-secret-0123456789abcdefgh")),
            ),
            ("bad_audience", Some(sign(&wrong_aud, SECRET))),
            ("bad_issuer", Some(sign(&wrong_iss, SECRET))),
            (
                "bad_algorithm",
                Some(format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none","typ":"JWT"}"#),
                    b64(&good.to_string())
                )),
            ),
            (
                "bad_signature",
                Some(format!(
                    "{}.{}.{}",
                    parts[0],
                    b64(&widened.to_string()),
                    parts[2]
                )),
            ),
            ("malformed", Some("not-a-jwt".into())),
        ];
        for (reason, t) in &cases {
            let header = t.as_deref().map(bearer);
            let headers: Vec<(&str, &str)> = header
                .as_deref()
                .map(|h| vec![("authorization", h)])
                .unwrap_or_default();
            let (status, body) = RawClient::connect(&g1.addr, "from=latest", &headers)
                .await
                .err()
                .unwrap_or_else(|| panic!("{reason}: accepted"));
            assert_eq!(status, 401, "{reason}: {body}");
            assert!(body.contains("UNAUTHORIZED"), "{reason}: {body}");
        }
        let after = parse_metrics(&http_get(&g1.addr, "/metrics").await.unwrap().1);
        let count = |m: &[dashstream_testkit::Sample], r: &str| {
            metric_sum(
                m,
                "dashstream_gateway_auth_failures_total",
                &[("reason", r)],
            )
        };
        for reason in [
            "missing",
            "expired",
            "bad_audience",
            "bad_issuer",
            "bad_algorithm",
            "malformed",
        ] {
            assert_eq!(
                count(&after, reason) - count(&before, reason),
                1.0,
                "{reason}"
            );
        }
        assert_eq!(
            count(&after, "bad_signature") - count(&before, "bad_signature"),
            2.0
        );
        assert_eq!(count(&after, "forbidden"), 1.0, "the widening above");
        assert_eq!(
            metric_sum(
                &after,
                "dashstream_gateway_upgrades_total",
                &[("reason", "unauthorized")]
            ),
            cases.len() as f64
        );

        // Origin: a foreign page is refused; the gateway's own and a listed one are not.
        let (status, body) = RawClient::connect(
            &g1.addr,
            "from=latest",
            &[
                ("origin", "http://evil.example"),
                ("authorization", &bearer(&a_token)),
            ],
        )
        .await
        .err()
        .expect("a foreign origin");
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("ORIGIN_NOT_ALLOWED"), "{body}");
        let own = format!("http://{}", g1.addr);
        RawClient::connect(
            &g1.addr,
            "from=latest",
            &[("origin", &own), ("authorization", &bearer(&a_token))],
        )
        .await
        .expect("the gateway's own origin");
        let g3 = gateway(&sys, "g3", &["--allowed-origins=https://dash.example.com"]).await;
        RawClient::connect(
            &g3.addr,
            "from=latest",
            &[
                ("origin", "https://dash.example.com"),
                ("authorization", &bearer(&a_token)),
            ],
        )
        .await
        .expect("a listed origin");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expiring_token_ends_the_connection_with_4001_unless_renewed() {
    deadline(180, async {
        let sys = System::new("auth-exp", 1, None).await;
        let _ingest = sys.ingest(&[]).await;
        let first = sys.produce(sys.produce_options(50, None)).await;
        let events = |r: &dashstream::produce::ProduceReport| -> usize {
            r.deliveries.iter().map(|d| d.events as usize).sum()
        };
        let n = events(&first);
        sys.wait_streams().await;
        let g1 = gateway(&sys, "g1", &[]).await;
        let g2 = gateway(&sys, "g2", &[]).await;
        let short =
            |tenants: serde_json::Value, secs: u64| sign(&claims(tenants, now() + secs), SECRET);

        // Not renewed: a reconnect frame with a cursor, then 4001; the cursor resumes elsewhere.
        let mut c = RawClient::connect(
            &g1.addr,
            "from=earliest",
            &[("authorization", &bearer(&short(json!("*"), 3)))],
        )
        .await
        .unwrap();
        let mut seen = BTreeMap::new();
        read_events(&mut c, n, &mut seen).await;
        let (cursor, code) = c.until_close(Duration::from_secs(15)).await;
        assert_eq!(code, 4001);
        let cursor = cursor.expect("a reconnect frame with a cursor before the close");
        let more = sys.produce(sys.produce_options(30, None)).await;
        let mut c = RawClient::connect(
            &g2.addr,
            &format!("from={cursor}"),
            &[("authorization", &bearer(&token(json!("*"))))],
        )
        .await
        .expect("resume with a fresh token");
        read_events(&mut c, n + events(&more), &mut seen).await;

        // Renewed in time: an `authenticated` frame, and the connection outlives the first token.
        let first_exp = now() + 3;
        let mut c = RawClient::connect(
            &g1.addr,
            "from=latest",
            &[("authorization", &bearer(&short(json!(["tenant-0"]), 3)))],
        )
        .await
        .unwrap();
        c.send(json!({"type": "auth", "token": short(json!(["tenant-0", "tenant-1"]), 120)}))
            .await;
        let v = c.until_type("authenticated", Duration::from_secs(5)).await;
        assert!(v["exp"].as_u64().unwrap() > now() + 60, "{v}");
        // Nothing ends the connection until well past the first token's exp (from=latest with no
        // producer: no frame at all), and it still answers.
        let past_first = Duration::from_secs((first_exp + 2).saturating_sub(now()));
        let got = c.next_json(past_first).await;
        assert!(got.is_none(), "the renewed connection got {got:?}");
        c.send(json!({"type": "ping"})).await;
        c.until_type("pong", Duration::from_secs(5)).await;

        // A bad renewal is an error frame; the connection keeps its token.
        c.send(json!({"type": "auth", "token": "garbage"})).await;
        let v = c.until_type("error", Duration::from_secs(5)).await;
        assert_eq!(v["code"], "UNAUTHORIZED", "{v}");

        // A renewal narrower than the connection's scope (all of tenant-0 here; the new token
        // grants only tenant-1): 4003.
        c.send(json!({"type": "auth", "token": short(json!(["tenant-1"]), 120)}))
            .await;
        let (cursor, code) = c.until_close(Duration::from_secs(10)).await;
        assert_eq!(code, 4003);
        assert!(cursor.is_some());
    })
    .await;
}

#[test]
fn a_gateway_off_loopback_without_auth_refuses_to_start() {
    use clap::Parser;
    let parse = |extra: &[&str]| {
        let mut args = vec![
            "gateway",
            "--redis-url=redis://127.0.0.1:1",
            "--listen=0.0.0.0:8080",
        ];
        args.extend(extra);
        dashstream_gateway::GatewayArgs::try_parse_from(args)
            .unwrap()
            .validate()
    };
    let err = parse(&[]).expect_err("no GATEWAY_AUTH on 0.0.0.0");
    assert!(err.to_string().contains("GATEWAY_AUTH"), "{err}");
    parse(&["--auth=none"]).expect("explicitly off");
    let err = parse(&["--auth=jwt"]).expect_err("jwt without a key");
    assert!(err.to_string().contains("GATEWAY_AUTH"), "{err}");
}

/// A client that keeps the server's JSON frames whole (the shared `Client` parses them into
/// `Frame`s without the events' tenants).
struct RawClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl RawClient {
    async fn connect(
        addr: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/ws?{query}")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
                resp.status().as_u16(),
                resp.body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            )),
            Err(e) => Err((0, e.to_string())),
        }
    }

    async fn send(&mut self, v: serde_json::Value) {
        use futures::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await
            .unwrap();
    }

    /// The next JSON frame; a close frame reads as `{"type":"close","code":N}`.
    async fn next_json(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
            {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(c)) => {
                    return Some(
                        json!({"type": "close", "code": c.map_or(1005, |c| u16::from(c.code))}),
                    )
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Reads until the close frame: the last `reconnect` frame's cursor and the close code.
    async fn until_close(&mut self, timeout: Duration) -> (Option<String>, u64) {
        let mut cursor = None;
        loop {
            let v = self.next_json(timeout).await.expect("a close frame");
            match v["type"].as_str() {
                Some("reconnect") => cursor = v["cursor"].as_str().map(str::to_string),
                Some("close") => return (cursor, v["code"].as_u64().unwrap()),
                _ => {}
            }
        }
    }

    /// Reads until a frame of type `t` (skipping others) and returns it.
    async fn until_type(&mut self, t: &str, timeout: Duration) -> serde_json::Value {
        loop {
            let v = self
                .next_json(timeout)
                .await
                .unwrap_or_else(|| panic!("no {t} frame"));
            if v["type"] == t {
                return v;
            }
            assert_ne!(v["type"], "close", "closed while waiting for {t}: {v}");
        }
    }
}
