//! Authentication at the upgrade (`GATEWAY_AUTH=jwt`): a JWT signed with HS256, RS256 or ES256,
//! checked against keys from files (a shared secret, PEM public keys, a JWKS document), with
//! `exp` (required), `nbf`, `iss` and `aud` checked within a small leeway. Its claims scope the
//! stream: a claim names the tenants the client may see (`"*"`: all), an optional one the event
//! types. The scope is applied as a filter the client cannot widen: asking for a tenant or type
//! outside it is refused, asking for none gets the whole scope.
//!
//! Where the token comes from ([`token_from`]): `Authorization: Bearer`, the subprotocol
//! `token.<jwt>` (what a browser can send), or the `access_token` query parameter.

use crate::event::Filter;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The subprotocol prefix that carries a token from a browser: `token.<jwt>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "token.";
/// The claim value that grants every tenant (or every type).
pub const ALL: &str = "*";

/// Settings of `GATEWAY_AUTH=jwt`.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// A file holding the HS256 shared secret (its bytes, a trailing newline removed).
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM files of RSA (RS256) or EC P-256 (ES256) public keys.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document (`{"keys":[...]}`); keys are matched by `kid` when the token has one.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched over HTTP(S) and refreshed in the background.
    pub jwks_url: Option<JwksUrl>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
    pub tenants_claim: String,
    pub types_claim: Option<String>,
}

/// `GATEWAY_JWT_JWKS_URL` and its bounds.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    pub url: reqwest::Url,
    /// A CA bundle (PEM) trusted for an https URL, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// How often the document is fetched again.
    pub refresh: Duration,
    /// Deadline of one fetch.
    pub timeout: Duration,
    /// A larger document is refused (the last good keys stay in use).
    pub max_bytes: usize,
    /// A document with more keys is refused.
    pub max_keys: usize,
}

/// A token naming a `kid` no key has wakes the refresher, but fetches are never closer than
/// this (or the refresh interval, when shorter): unknown kids cannot make the gateway hammer
/// the key server.
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a token was refused. Each has its HTTP status at the upgrade, its close code during a
/// connection, and the `reason` of `dashstream_gateway_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(String),
    BadAlgorithm(String),
    BadSignature,
    Expired,
    NotYetValid,
    BadIssuer,
    BadAudience,
    /// A valid token that does not grant what was asked (a tenant or type outside its scope,
    /// or no tenant at all).
    Forbidden(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::BadAlgorithm(_) => "bad_algorithm",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::Forbidden(_) => "forbidden",
        }
    }

    /// `UNAUTHORIZED` (401, close 4001) or `FORBIDDEN` (403, close 4003).
    pub fn forbidden(&self) -> bool {
        matches!(self, Self::Forbidden(_))
    }

    pub fn message(&self) -> String {
        match self {
            Self::Missing => "a token is required: Authorization: Bearer, the subprotocol token.<jwt>, or access_token".into(),
            Self::Malformed(m) => format!("the token is not a JWT: {m}"),
            Self::BadAlgorithm(a) => format!("the token's algorithm {a} is not accepted here"),
            Self::BadSignature => "the token's signature does not verify with any key of this gateway".into(),
            Self::Expired => "the token has expired".into(),
            Self::NotYetValid => "the token is not valid yet (nbf)".into(),
            Self::BadIssuer => "the token's issuer (iss) is not the one this gateway accepts".into(),
            Self::BadAudience => "the token's audience (aud) is not this gateway".into(),
            Self::Forbidden(m) => m.clone(),
        }
    }
}

/// What one scope claim grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(HashSet<String>),
}

impl Scope {
    /// The filter a client gets for `requested` under this scope; a value outside it is
    /// refused with the value named.
    fn narrow(
        &self,
        what: &str,
        requested: Option<HashSet<String>>,
    ) -> Result<Option<HashSet<String>>, AuthError> {
        match (self, requested) {
            (Scope::All, r) => Ok(r),
            (Scope::Only(granted), None) => Ok(Some(granted.clone())),
            (Scope::Only(granted), Some(r)) => {
                let mut outside: Vec<&String> = r.difference(granted).collect();
                if outside.is_empty() {
                    Ok(Some(r))
                } else {
                    outside.sort();
                    Err(AuthError::Forbidden(format!(
                        "the token does not grant {what} {:?}",
                        outside[0]
                    )))
                }
            }
        }
    }

    /// Whether every value this scope lets through, `other` does too.
    fn within(&self, other: &Scope) -> bool {
        match (self, other) {
            (_, Scope::All) => true,
            (Scope::All, Scope::Only(_)) => false,
            (Scope::Only(a), Scope::Only(b)) => a.is_subset(b),
        }
    }
}

/// What a valid token grants, until `exp` (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenants: Scope,
    pub types: Scope,
    pub exp: u64,
    pub subject: Option<String>,
}

impl Grant {
    /// The client's filter under this grant (see [`Scope::narrow`]).
    pub fn scope(&self, requested: Filter) -> Result<Filter, AuthError> {
        Ok(Filter {
            tenants: self.tenants.narrow("tenant", requested.tenants)?,
            threads: requested.threads,
            types: self.types.narrow("type", requested.types)?,
        })
    }

    /// Whether a connection scoped to `filter` may continue under this grant (a refreshed
    /// token must grant at least what the connection already reads).
    pub fn covers(&self, filter: &Filter) -> bool {
        let scope_of = |s: &Option<HashSet<String>>| match s {
            None => Scope::All,
            Some(v) => Scope::Only(v.clone()),
        };
        scope_of(&filter.tenants).within(&self.tenants)
            && scope_of(&filter.types).within(&self.types)
    }
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the configured keys.
pub struct Authenticator {
    /// From files, fixed at start.
    keys: Vec<Key>,
    /// From `GATEWAY_JWT_JWKS_URL`: the last good document's keys.
    remote: RwLock<Arc<Vec<Key>>>,
    fetcher: Option<Fetcher>,
    settings: JwtSettings,
}

/// What fetches the JWKS document.
struct Fetcher {
    client: reqwest::Client,
    url: JwksUrl,
    /// Woken by a token whose `kid` no key has.
    kid_miss: tokio::sync::Notify,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("remote_keys", &self.remote_keys())
            .finish()
    }
}

/// A problem with the key settings, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct KeyError {
    pub setting: &'static str,
    pub message: String,
}

fn key_error(setting: &'static str, message: impl Into<String>) -> KeyError {
    KeyError {
        setting,
        message: message.into(),
    }
}

impl Authenticator {
    /// Loads every configured key; at least one is required.
    pub fn load(settings: JwtSettings) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(path) = &settings.hs256_secret_file {
            const S: &str = "GATEWAY_JWT_HS256_SECRET_FILE";
            let secret = std::fs::read(path)
                .map_err(|e| key_error(S, format!("cannot read {}: {e}", path.display())))?;
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            if secret.len() < 32 {
                return Err(key_error(
                    S,
                    "the secret must be at least 32 bytes (256 bits)",
                ));
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret).map_err(|e| key_error(S, e.to_string()))?,
            });
        }
        for path in &settings.public_key_files {
            const S: &str = "GATEWAY_JWT_PUBLIC_KEY_FILES";
            let pem = std::fs::read(path)
                .map_err(|e| key_error(S, format!("cannot read {}: {e}", path.display())))?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                Key {
                    kid: None,
                    alg: Algorithm::RS256,
                    key: k,
                }
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                Key {
                    kid: None,
                    alg: Algorithm::ES256,
                    key: k,
                }
            } else {
                return Err(key_error(
                    S,
                    format!(
                        "{} is not a PEM RSA or EC (P-256) public key",
                        path.display()
                    ),
                ));
            };
            keys.push(key);
        }
        if let Some(path) = &settings.jwks_file {
            const S: &str = "GATEWAY_JWT_JWKS_FILE";
            let text = std::fs::read_to_string(path)
                .map_err(|e| key_error(S, format!("cannot read {}: {e}", path.display())))?;
            let doc = parse_jwks(&text, usize::MAX)
                .map_err(|e| key_error(S, format!("{}: {e}", path.display())))?;
            keys.extend(doc);
        }
        let fetcher = match &settings.jwks_url {
            None => None,
            Some(u) => Some(Fetcher::new(u)?),
        };
        if keys.is_empty() && fetcher.is_none() {
            return Err(key_error(
                "GATEWAY_AUTH",
                "jwt needs a key: GATEWAY_JWT_HS256_SECRET_FILE, GATEWAY_JWT_PUBLIC_KEY_FILES, GATEWAY_JWT_JWKS_FILE or GATEWAY_JWT_JWKS_URL",
            ));
        }
        Ok(Self {
            keys,
            remote: RwLock::new(Arc::new(Vec::new())),
            fetcher,
            settings,
        })
    }

    /// Keys of the fetched JWKS document in use.
    pub fn remote_keys(&self) -> usize {
        self.remote.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether keys come from `GATEWAY_JWT_JWKS_URL`.
    pub fn fetches_keys(&self) -> bool {
        self.fetcher.is_some()
    }

    /// Fetches the JWKS document once and, when it is good, uses its keys from now on (a bad
    /// one leaves the last good keys in use). The number of keys, or why not.
    pub async fn fetch_keys(&self) -> Result<usize, String> {
        let Some(f) = &self.fetcher else {
            return Ok(0);
        };
        let keys = f.fetch().await?;
        let n = keys.len();
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// Fetches the JWKS document every refresh interval until `stop` (sooner after a failure,
    /// or when a token names an unknown `kid`, never closer than [`JWKS_MIN_INTERVAL`]), and
    /// counts each fetch.
    pub async fn keep_keys_fresh(
        self: Arc<Self>,
        metrics: Arc<crate::metrics::Metrics>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(f) = &self.fetcher else {
            return;
        };
        let refresh = f.url.refresh;
        let min_gap = JWKS_MIN_INTERVAL.min(refresh);
        let mut last = Instant::now();
        let mut failing = Duration::ZERO;
        loop {
            let wait = if failing.is_zero() { refresh } else { failing };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until((last + wait).into()) => {}
                _ = f.kid_miss.notified() => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until((last + min_gap).into()) => {}
                    }
                }
            }
            last = Instant::now();
            match self.fetch_keys().await {
                Ok(n) => {
                    failing = Duration::ZERO;
                    record_fetch(&metrics, Some(n));
                }
                Err(e) => {
                    // Retry sooner: 1 s, doubling up to the refresh interval.
                    failing = (failing * 2).clamp(Duration::from_secs(1).min(refresh), refresh);
                    record_fetch(&metrics, None);
                    tracing::warn!(error = %e, url = %f.url.url, keys = self.remote_keys(),
                        "JWKS fetch failed; the last good keys stay in use");
                }
            }
        }
    }
    /// Checks `token` and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and every algorithm the library does not know.
            ErrorKind::Json(_) => AuthError::BadAlgorithm("(unknown or none)".into()),
            _ => AuthError::Malformed(e.to_string()),
        })?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(AuthError::BadAlgorithm(format!("{:?}", header.alg)));
        }
        let remote = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = || self.keys.iter().chain(remote.iter());
        if let (Some(kid), Some(f)) = (&header.kid, &self.fetcher) {
            if !all().any(|k| k.kid.as_ref() == Some(kid)) {
                // Perhaps a key the server has published since the last fetch.
                f.kid_miss.notify_one();
            }
        }
        let candidates: Vec<&Key> = all()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::BadAlgorithm(format!(
                "{:?} (no key of this gateway uses it)",
                header.alg
            )));
        }
        let mut last = AuthError::BadSignature;
        for key in candidates {
            let mut v = Validation::new(key.alg);
            v.leeway = self.settings.leeway_secs;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            match &self.settings.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &self.settings.issuer {
                v.set_issuer(&[iss]);
            }
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &key.key, &v,
            ) {
                Ok(data) => return self.grant(&data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => return Err(AuthError::NotYetValid),
                        ErrorKind::InvalidIssuer => return Err(AuthError::BadIssuer),
                        ErrorKind::InvalidAudience => return Err(AuthError::BadAudience),
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(AuthError::Malformed(format!("no {c} claim")))
                        }
                        _ => AuthError::Malformed(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }

    fn grant(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Grant, AuthError> {
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| AuthError::Malformed("exp is not a number of seconds".into()))?;
        let tenants = match scope_claim(claims, &self.settings.tenants_claim)? {
            Some(s) => s,
            None => {
                return Err(AuthError::Forbidden(format!(
                    "the token grants no tenant (claim {:?})",
                    self.settings.tenants_claim
                )))
            }
        };
        let types = match &self.settings.types_claim {
            Some(c) => scope_claim(claims, c)?.unwrap_or(Scope::All),
            None => Scope::All,
        };
        Ok(Grant {
            tenants,
            types,
            exp,
            subject: claims
                .get("sub")
                .and_then(|s| s.as_str())
                .map(str::to_string),
        })
    }
}

/// Counts one JWKS fetch: `Some(keys)` when it succeeded.
pub fn record_fetch(metrics: &crate::metrics::Metrics, keys: Option<usize>) {
    match keys {
        Some(n) => {
            metrics.jwks_fetches.with_label_values(&["ok"]).inc();
            metrics.jwks_keys.set(n as i64);
            metrics.jwks_last_success.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
        }
        None => metrics.jwks_fetches.with_label_values(&["error"]).inc(),
    }
}

impl Fetcher {
    fn new(u: &JwksUrl) -> Result<Self, KeyError> {
        let mut b = reqwest::Client::builder()
            .timeout(u.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("dashstream-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &u.ca_file {
            const S: &str = "GATEWAY_JWT_JWKS_CA_FILE";
            let pem = std::fs::read(path)
                .map_err(|e| key_error(S, format!("cannot read {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                key_error(S, format!("{} is not a PEM CA bundle: {e}", path.display()))
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| key_error("GATEWAY_JWT_JWKS_URL", e.to_string()))?;
        Ok(Self {
            client,
            url: u.clone(),
            kid_miss: tokio::sync::Notify::new(),
        })
    }

    /// The keys of the document at the URL, read up to `max_bytes`.
    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let max = self.url.max_bytes;
        let mut resp = self
            .client
            .get(self.url.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot fetch: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the key server answered {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(format!(
                "the document is larger than GATEWAY_JWT_JWKS_MAX_BYTES ({max} bytes)"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
        {
            if body.len() + chunk.len() > max {
                return Err(format!(
                    "the document is larger than GATEWAY_JWT_JWKS_MAX_BYTES ({max} bytes)"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body).map_err(|_| "the document is not UTF-8")?;
        parse_jwks(text, self.url.max_keys)
    }
}

/// The keys of a JWKS document (at most `max_keys` of them).
fn parse_jwks(text: &str, max_keys: usize) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.len() > max_keys {
        return Err(format!(
            "{} keys, more than GATEWAY_JWT_JWKS_MAX_KEYS ({max_keys})",
            set.keys.len()
        ));
    }
    if set.keys.is_empty() {
        return Err("the document has no key".into());
    }
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => {
                Algorithm::RS256
            }
            (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
            (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            (Some(KeyAlgorithm::HS256), _) | (None, AlgorithmParameters::OctetKey(_)) => {
                Algorithm::HS256
            }
            (a, _) => {
                return Err(format!(
                    "key {:?}: only RS256, ES256 (P-256) and HS256 keys are accepted, not {a:?}",
                    jwk.common.key_id
                ))
            }
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}

/// A scope claim: `"*"`, one value, or a list of values (`"*"` among them grants all).
fn scope_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<Scope>, AuthError> {
    let bad = || {
        AuthError::Malformed(format!(
            "claim {name:?} must be a string or a list of strings"
        ))
    };
    let values: Vec<String> = match claims.get(name) {
        None => return Ok(None),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if values.iter().any(|v| v == ALL) {
        return Ok(Some(Scope::All));
    }
    if values.is_empty() {
        return Ok(None);
    }
    Ok(Some(Scope::Only(values.into_iter().collect())))
}

/// The token of a request: `Authorization: Bearer <t>`, else a `token.<t>` subprotocol, else
/// the `access_token` parameter. More than one source is refused (which would be believed is
/// then unclear).
pub fn token_from<'a>(
    authorization: Option<&'a str>,
    subprotocols: &[&'a str],
    query: Option<&'a str>,
) -> Result<Option<&'a str>, AuthError> {
    let bearer = match authorization {
        None => None,
        Some(h) => match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                Some(t.trim())
            }
            _ => {
                return Err(AuthError::Malformed(
                    "the Authorization header must be `Bearer <token>`".into(),
                ))
            }
        },
    };
    let proto = subprotocols
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX));
    let given: Vec<&str> = [bearer, proto, query].into_iter().flatten().collect();
    match given.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(AuthError::Malformed(
            "give the token once: Authorization, the token subprotocol or access_token".into(),
        )),
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        let dir = std::env::temp_dir().join(format!("auth-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, [SECRET, b"\n"].concat()).unwrap();
        Authenticator::load(JwtSettings {
            hs256_secret_file: Some(f),
            audience: Some("dashstream".into()),
            issuer: Some("tests".into()),
            leeway_secs: 5,
            tenants_claim: "tenants".into(),
            types_claim: Some("types".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn good(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"exp": now_secs() + 60, "aud": "dashstream", "iss": "tests", "tenants": ["acme"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn a_good_token_scopes_the_filter() {
        let a = auth();
        let g = a.verify(&token(good(json!({})))).unwrap();
        let f = g.scope(Filter::default()).unwrap();
        assert_eq!(f.tenants, Some(HashSet::from(["acme".to_string()])));
        assert_eq!(f.types, None);
        let other = Filter {
            tenants: Some(HashSet::from(["globex".to_string()])),
            ..Default::default()
        };
        assert!(matches!(g.scope(other), Err(AuthError::Forbidden(_))));
        let all = a.verify(&token(good(json!({"tenants": "*"})))).unwrap();
        assert_eq!(all.scope(Filter::default()).unwrap().tenants, None);
        assert!(all.covers(&Filter::default()));
        assert!(!g.covers(&Filter::default()));
    }

    #[test]
    fn every_bad_token_gets_its_reason() {
        let a = auth();
        let reason = |t: &str| a.verify(t).unwrap_err().reason();
        assert_eq!(
            reason(&token(good(json!({"exp": now_secs() - 60})))),
            "expired"
        );
        assert_eq!(
            reason(&token(good(json!({"nbf": now_secs() + 60})))),
            "not_yet_valid"
        );
        assert_eq!(
            reason(&token(good(json!({"aud": "other"})))),
            "bad_audience"
        );
        assert_eq!(reason(&token(good(json!({"iss": "other"})))), "bad_issuer");
        let wrong_key = encode(
            &Header::new(Algorithm::HS256),
            &good(json!({})),
            &EncodingKey::from_secret(b"another secret, 32 bytes or more!!").unwrap(),
        )
        .unwrap();
        assert_eq!(reason(&wrong_key), "bad_signature");
        // Tampered: the payload changed, the signature kept.
        let t = token(good(json!({})));
        let parts: Vec<&str> = t.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = b64.encode(good(json!({"tenants": "*"})).to_string());
        assert_eq!(
            reason(&format!("{}.{forged}.{}", parts[0], parts[2])),
            "bad_signature"
        );
        // alg none, unsigned.
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(good(json!({})).to_string())
        );
        assert_eq!(reason(&none), "bad_algorithm");
        assert_eq!(reason("not a jwt"), "malformed");
        assert_eq!(
            reason(&token(
                json!({"aud": "dashstream", "iss": "tests", "tenants": ["a"]})
            )),
            "malformed"
        );
        assert_eq!(reason(&token(good(json!({"tenants": null})))), "malformed");
        let no_tenant = good(json!({}));
        let mut no_tenant = no_tenant.as_object().unwrap().clone();
        no_tenant.remove("tenants");
        assert_eq!(
            reason(&token(serde_json::Value::Object(no_tenant))),
            "forbidden"
        );
    }

    #[test]
    fn the_token_comes_from_one_place() {
        assert_eq!(token_from(Some("Bearer abc"), &[], None), Ok(Some("abc")));
        assert_eq!(
            token_from(None, &["dashstream", "token.abc"], None),
            Ok(Some("abc"))
        );
        assert_eq!(token_from(None, &[], Some("abc")), Ok(Some("abc")));
        assert_eq!(token_from(None, &[], None), Ok(None));
        assert!(token_from(Some("Basic x"), &[], None).is_err());
        assert!(token_from(Some("Bearer a"), &[], Some("b")).is_err());
    }

    #[test]
    fn a_types_claim_narrows_types() {
        let a = auth();
        let g = a
            .verify(&token(good(json!({"types": ["metric"]}))))
            .unwrap();
        let f = g.scope(Filter::default()).unwrap();
        assert_eq!(f.types, Some(HashSet::from(["metric".to_string()])));
        let want_log = Filter {
            types: Some(HashSet::from(["log".to_string()])),
            ..Default::default()
        };
        assert!(g.scope(want_log).is_err());
    }
}
