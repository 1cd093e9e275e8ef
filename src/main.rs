//! `dashstream`: the operator's command line. Every Kafka command takes the same connection
//! and topic flags (and environment variables) as the services, with the same defaults.

use clap::{Args, Parser, Subcommand};
use dashstream::config::{exit_config, parse_or_exit, ConfigErrors};
use dashstream::kafka::{AccessError, KafkaArgs, KafkaConnection, TopicArgs};
use dashstream::produce::{Fault, ProduceOptions};
use dashstream::provision::{Outcome, TopicSpec};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "dashstream",
    version,
    about = "DashStream Gateway command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the event topic and its DLQ topic (idempotent; reports differences).
    Provision(ProvisionArgs),
    /// Produce synthetic events, optionally with injected invalid records.
    Produce(ProduceArgs),
    /// Print events as JSON lines, from Kafka, Redis or a gateway WebSocket.
    Tail(TailArgs),
    /// Mint a token for a gateway with GATEWAY_AUTH=jwt, from a local key (development and
    /// tests; production tokens come from your identity provider).
    Token(TokenArgs),
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// HS256: the file holding the shared secret (the gateway's GATEWAY_JWT_HS256_SECRET_FILE).
    #[arg(long, conflicts_with = "private_key_file")]
    secret_file: Option<std::path::PathBuf>,
    /// RS256 or ES256: a PEM private key (RSA, or EC P-256).
    #[arg(long)]
    private_key_file: Option<std::path::PathBuf>,
    /// Tenants the token grants (comma-separated; `*` for all).
    #[arg(long, value_delimiter = ',', required = true)]
    tenants: Vec<String>,
    /// Event types the token grants (comma-separated; default: no type claim).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// The claim names, as the gateway's GATEWAY_JWT_TENANTS_CLAIM / GATEWAY_JWT_TYPES_CLAIM.
    #[arg(long, default_value = "tenants")]
    tenants_claim: String,
    #[arg(long, default_value = "types")]
    types_claim: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    #[arg(long)]
    audience: Option<String>,
    #[arg(long)]
    issuer: Option<String>,
    #[arg(long, default_value = "dashstream-dev")]
    subject: String,
    /// The key id (`kid`) of the header, for a gateway with a JWKS of several keys.
    #[arg(long)]
    kid: Option<String>,
}

#[derive(Args, Debug)]
struct TailArgs {
    #[command(subcommand)]
    source: TailSource,
    /// Stop after this many events.
    #[arg(long, global = true)]
    count: Option<u64>,
    /// Stop after this many seconds without an event.
    #[arg(long, global = true)]
    idle_secs: Option<u64>,
}

#[derive(Subcommand, Debug)]
// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum TailSource {
    /// From the Kafka topic. Commits nothing and joins no group unless --group/--commit.
    Kafka {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topic: TopicArgs,
        /// earliest | latest
        #[arg(long, default_value = "latest")]
        from: String,
        /// Join this consumer group (default: no group; partitions are assigned directly).
        #[arg(long)]
        group: Option<String>,
        /// Commit the offsets of printed records (needs --group).
        #[arg(long)]
        commit: bool,
        /// Join --group even when it is the ingest's group (taking partitions from the
        /// ingest: its events then never reach Redis).
        #[arg(long)]
        force: bool,
        /// The ingest's consumer group, which --group may not name without --force.
        #[arg(
            long = "kafka-group-id",
            env = "KAFKA_GROUP_ID",
            default_value = "dashstream-ingest"
        )]
        ingest_group: String,
    },
    /// From the Redis partition streams.
    Redis {
        #[command(flatten)]
        redis: dashstream::redis_config::RedisArgs,
        #[arg(long = "kafka-topic", env = "KAFKA_TOPIC", default_value = dashstream::DEFAULT_TOPIC)]
        topic: String,
        /// Only these partitions (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        partition: Vec<i32>,
        /// earliest | latest
        #[arg(long, default_value = "latest")]
        from: String,
    },
    /// From a gateway WebSocket, resuming with the cursor after disconnects.
    Ws {
        /// e.g. ws://127.0.0.1:8080/ws
        #[arg(
            long,
            env = "DASHSTREAM_WS_URL",
            default_value = "ws://127.0.0.1:8080/ws"
        )]
        url: String,
        /// latest | earliest | a cursor
        #[arg(long, default_value = "latest")]
        from: String,
        /// Extra query parameters, e.g. "tenant=a&type=token".
        #[arg(long, default_value = "")]
        query: String,
        /// A token for a gateway with GATEWAY_AUTH=jwt, sent as `Authorization: Bearer`.
        #[arg(long, env = "DASHSTREAM_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn tail_from(s: &str) -> dashstream::tail::From {
    match s {
        "earliest" => dashstream::tail::From::Earliest,
        "latest" => dashstream::tail::From::Latest,
        other => {
            let mut e = ConfigErrors::default();
            e.push(dashstream::config::ConfigError::flag(
                "from",
                format!("{other:?} is not earliest or latest"),
            ));
            exit_config(&e)
        }
    }
}

#[derive(Args, Debug)]
struct ProvisionArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topic: TopicArgs,
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 12)]
    partitions: i32,
    /// Replicas of each partition. Required unless every broker is on this machine (then 1).
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR")]
    replication_factor: Option<i32>,
    /// Retention of the event topic, in hours.
    #[arg(long, env = "KAFKA_RETENTION_HOURS", default_value_t = 24)]
    retention_hours: i64,
    /// Retention of the DLQ topic, in hours (kept longer, for forensics).
    #[arg(long, env = "KAFKA_DLQ_RETENTION_HOURS", default_value_t = 24 * 14)]
    dlq_retention_hours: i64,
    /// Check the settings (secret files read) and that every KAFKA_/REDIS_/INGEST_/GATEWAY_/
    /// DASHSTREAM_ variable in the environment is one of them; print OK and exit 0, or exit 64
    /// naming each problem. Connects to nothing.
    #[arg(long = "check-config")]
    check_config: bool,
}

#[derive(Args, Debug)]
struct ProduceArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topic: TopicArgs,
    /// Number of distinct threads (record keys).
    #[arg(long, default_value_t = 100)]
    threads: usize,
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Payload size of each event, in bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Events per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// zstd-compress record values (marker 0x01).
    #[arg(long)]
    compress: bool,
    /// Events per record (1: single events; more: batches).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Inject invalid records of these kinds, in turn.
    #[arg(long, value_enum, value_delimiter = ',')]
    fault: Vec<Fault>,
    /// One injected fault every N records.
    #[arg(long, default_value_t = 100)]
    fault_every: u64,
    /// Size of an `oversize` fault record, in bytes.
    #[arg(long, default_value_t = 600 * 1024)]
    oversize_bytes: usize,
    /// Thread ids are `<prefix>-<n>` (default: `thread-` and 8 random hex digits, new per run).
    #[arg(long)]
    thread_prefix: Option<String>,
}

fn connection(kafka: &KafkaArgs, topic: &TopicArgs) -> KafkaConnection {
    let mut errors = ConfigErrors::default();
    errors.extend(topic.validate());
    match kafka.validate() {
        Ok(conn) if errors.is_empty() => conn,
        Ok(_) => exit_config(&errors),
        Err(e) => {
            errors.extend(e);
            exit_config(&errors)
        }
    }
}

/// Exits 64 naming the setting when the brokers refuse this client (a wrong SASL password, a
/// certificate on either side not trusted); an unreachable broker is left to the command.
async fn check_access(conn: &KafkaConnection) {
    let probe = conn.clone();
    let checked =
        tokio::task::spawn_blocking(move || probe.check_access(None, Duration::from_secs(10)))
            .await;
    if let Ok(Err(AccessError::Refused(e))) = checked {
        let mut errors = ConfigErrors::default();
        errors.push(e);
        exit_config(&errors);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dashstream::telemetry::init("warn");
    let cli: Cli = parse_or_exit();
    match cli.command {
        Command::Provision(a) => provision(a).await,
        Command::Produce(a) => produce(a).await,
        Command::Tail(a) => tail(a).await,
        Command::Token(a) => token(a),
    }
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let (alg, key) = match (&a.secret_file, &a.private_key_file) {
        (Some(f), None) => {
            let secret =
                std::fs::read(f).with_context(|| format!("--secret-file {}", f.display()))?;
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            (Algorithm::HS256, EncodingKey::from_secret(secret)?)
        }
        (None, Some(f)) => {
            let pem =
                std::fs::read(f).with_context(|| format!("--private-key-file {}", f.display()))?;
            match EncodingKey::from_rsa_pem(&pem) {
                Ok(k) => (Algorithm::RS256, k),
                Err(_) => (
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(&pem).with_context(|| {
                        format!(
                            "--private-key-file {}: not a PEM RSA or EC P-256 private key",
                            f.display()
                        )
                    })?,
                ),
            }
        }
        _ => anyhow::bail!("give --secret-file (HS256) or --private-key-file (RS256/ES256)"),
    };
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::json!({
        "sub": a.subject,
        "iat": now,
        "exp": now + a.ttl_secs,
    });
    claims[&a.tenants_claim] = serde_json::json!(a.tenants);
    if !a.types.is_empty() {
        claims[&a.types_claim] = serde_json::json!(a.types);
    }
    if let Some(aud) = a.audience {
        claims["aud"] = aud.into();
    }
    if let Some(iss) = a.issuer {
        claims["iss"] = iss.into();
    }
    let mut header = Header::new(alg);
    header.kid = a.kid;
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}

async fn tail(a: TailArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let stop = dashstream::tail::Stop {
        count: a.count,
        idle: a.idle_secs.map(Duration::from_secs),
    };
    let stdout = std::io::stdout();
    let mut out = move |line: String| {
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{line}");
    };
    match a.source {
        TailSource::Kafka {
            kafka,
            topic,
            from,
            group,
            commit,
            force,
            ingest_group,
        } => {
            if group.as_deref() == Some(ingest_group.as_str()) && !force {
                anyhow::bail!(
                    "--group {ingest_group} is the ingest's consumer group (KAFKA_GROUP_ID): \
                     joining it takes partitions away from the ingest, whose events then never \
                     reach Redis. Use another group, or --force if that is what you want"
                );
            }
            let conn = connection(&kafka, &topic);
            check_access(&conn).await;
            let t = dashstream::tail::KafkaTail {
                topic: topic.topic.clone(),
                from: tail_from(&from),
                group,
                commit,
                limits: dashstream::codec::Limits::default(),
            };
            dashstream::tail::kafka(&conn, &t, stop, &mut out).await?;
        }
        TailSource::Redis {
            redis,
            topic,
            partition,
            from,
        } => {
            let settings = redis.validate().unwrap_or_else(|e| exit_config(&e));
            let keys = dashstream::keys::StreamKeys::new(&settings.key_prefix, &topic);
            let parts = (!partition.is_empty()).then_some(partition);
            dashstream::tail::redis(&settings, &keys, parts, tail_from(&from), stop, &mut out)
                .await?;
        }
        TailSource::Ws {
            url,
            from,
            query,
            token,
        } => {
            dashstream::tail::ws(&url, &from, &query, token.as_deref(), stop, &mut out).await?;
        }
    }
    Ok(())
}

/// `provision`'s settings, every problem reported at once.
fn provision_settings(a: &ProvisionArgs) -> Result<(KafkaConnection, i32), ConfigErrors> {
    let mut errors = a.topic.validate();
    let conn = a.kafka.validate().map_err(|e| errors.extend(e)).ok();
    let replication_factor = match a.replication_factor {
        Some(rf) => rf,
        // One replica is right only for a broker on this machine (the local stack).
        None if brokers_are_local(a.kafka.brokers.as_deref().unwrap_or("")) => 1,
        None => {
            errors.push(dashstream::config::ConfigError::new(
                "KAFKA_REPLICATION_FACTOR",
                "replication-factor",
                "is required when the brokers are not on this machine (1 replica would lose \
                 the topic with one broker)",
            ));
            1
        }
    };
    for (env, flag, v) in [
        ("KAFKA_PARTITIONS", "partitions", a.partitions as i64),
        (
            "KAFKA_REPLICATION_FACTOR",
            "replication-factor",
            replication_factor as i64,
        ),
        (
            "KAFKA_RETENTION_HOURS",
            "retention-hours",
            a.retention_hours,
        ),
        (
            "KAFKA_DLQ_RETENTION_HOURS",
            "dlq-retention-hours",
            a.dlq_retention_hours,
        ),
    ] {
        if v < 1 {
            errors.push(dashstream::config::ConfigError::new(
                env,
                flag,
                "must be at least 1",
            ));
        }
    }
    match conn {
        Some(conn) if errors.is_empty() => Ok((conn, replication_factor)),
        _ => Err(errors),
    }
}

async fn provision(a: ProvisionArgs) -> anyhow::Result<()> {
    let settings = provision_settings(&a);
    if a.check_config {
        use clap::CommandFactory;
        let cli = Cli::command();
        let cmd = cli
            .find_subcommand("provision")
            .expect("provision is a subcommand");
        match dashstream::config::check_result(cmd, settings, std::env::vars_os()) {
            Some(errors) => exit_config(&errors),
            None => {
                println!("dashstream provision: configuration OK");
                return Ok(());
            }
        }
    }
    let (conn, replication_factor) = settings.unwrap_or_else(|e| exit_config(&e));
    check_access(&conn).await;
    let hour = 3_600_000;
    let specs = [
        TopicSpec {
            name: a.topic.topic.clone(),
            partitions: a.partitions,
            replication: replication_factor,
            retention_ms: a.retention_hours * hour,
        },
        TopicSpec {
            name: a.topic.dlq_topic(),
            partitions: a.partitions.min(3),
            replication: replication_factor,
            retention_ms: a.dlq_retention_hours * hour,
        },
    ];
    let mut differs = 0;
    for (name, outcome) in dashstream::provision::provision(&conn, &specs).await? {
        match outcome {
            Outcome::Created => println!("{name}: created"),
            Outcome::Unchanged => println!("{name}: exists, as asked"),
            Outcome::Differs(d) => {
                differs += 1;
                println!("{name}: exists and differs: {}", d.join("; "))
            }
        }
    }
    if differs > 0 {
        // Nothing is changed on an existing topic; a script must not take this for success.
        eprintln!("{differs} topic(s) exist with other settings than asked; nothing was changed");
        std::process::exit(EXIT_DIFFERS);
    }
    Ok(())
}

/// `provision`'s exit status when a topic exists with other settings than asked.
const EXIT_DIFFERS: i32 = 3;

/// Whether every broker address is a loopback one (`localhost`, 127.0.0.0/8, ::1).
fn brokers_are_local(brokers: &str) -> bool {
    let hosts: Vec<&str> = brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| match b.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => b,
        })
        .collect();
    !hosts.is_empty()
        && hosts.iter().all(|h| {
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let conn = connection(&a.kafka, &a.topic);
    check_access(&conn).await;
    let opts = ProduceOptions {
        topic: a.topic.topic.clone(),
        threads: a.threads.max(1),
        tenants: a.tenants.max(1),
        payload_bytes: a.payload_bytes,
        count: a.count,
        duration: a.duration_secs.map(Duration::from_secs),
        rate: (a.rate > 0.0).then_some(a.rate),
        compress: a.compress,
        batch: a.batch.max(1),
        faults: a.fault,
        fault_every: a.fault_every.max(1),
        oversize_bytes: a.oversize_bytes,
        record_deliveries: false,
        // A fresh prefix per run unless given: a second run's threads then start their own
        // sequences instead of looking like duplicates and reorders of the first run's.
        thread_prefix: a.thread_prefix.unwrap_or_else(|| {
            format!("thread-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        }),
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let r = dashstream::produce::run(&conn, opts, stop).await?;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{{\"records\":{},\"events\":{},\"faults\":{},\"seconds\":{:.3},\"events_per_second\":{:.0}}}",
        r.records,
        r.events,
        r.faults,
        secs,
        r.events as f64 / secs
    );
    Ok(())
}
