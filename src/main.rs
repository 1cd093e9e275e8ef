//! `dashstream`: the operator's command line. Every Kafka command takes the same connection
//! and topic flags (and environment variables) as the services, with the same defaults.

use clap::{Args, Parser, Subcommand};
use dashstream::config::{exit_config, parse_or_exit, ConfigErrors};
use dashstream::kafka::{KafkaArgs, KafkaConnection, TopicArgs};
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
    },
}

fn tail_from(s: &str) -> dashstream::tail::From {
    match s {
        "earliest" => dashstream::tail::From::Earliest,
        "latest" => dashstream::tail::From::Latest,
        other => {
            let mut e = ConfigErrors::default();
            e.push(dashstream::config::ConfigError::new(
                "-",
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
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    replication_factor: i32,
    /// Retention of the event topic, in hours.
    #[arg(long, env = "KAFKA_RETENTION_HOURS", default_value_t = 24)]
    retention_hours: i64,
    /// Retention of the DLQ topic, in hours (kept longer, for forensics).
    #[arg(long, env = "KAFKA_DLQ_RETENTION_HOURS", default_value_t = 24 * 14)]
    dlq_retention_hours: i64,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dashstream::telemetry::init("warn");
    let cli: Cli = parse_or_exit();
    match cli.command {
        Command::Provision(a) => provision(a).await,
        Command::Produce(a) => produce(a).await,
        Command::Tail(a) => tail(a).await,
    }
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
        } => {
            let conn = connection(&kafka, &topic);
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
            dashstream::tail::redis(
                &settings.client,
                &keys,
                parts,
                tail_from(&from),
                stop,
                &mut out,
            )
            .await?;
        }
        TailSource::Ws { url, from, query } => {
            dashstream::tail::ws(&url, &from, &query, stop, &mut out).await?;
        }
    }
    Ok(())
}

async fn provision(a: ProvisionArgs) -> anyhow::Result<()> {
    let conn = connection(&a.kafka, &a.topic);
    let mut errors = ConfigErrors::default();
    for (env, flag, v) in [
        ("KAFKA_PARTITIONS", "partitions", a.partitions as i64),
        (
            "KAFKA_REPLICATION_FACTOR",
            "replication-factor",
            a.replication_factor as i64,
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
    if !errors.is_empty() {
        exit_config(&errors);
    }
    let hour = 3_600_000;
    let specs = [
        TopicSpec {
            name: a.topic.topic.clone(),
            partitions: a.partitions,
            replication: a.replication_factor,
            retention_ms: a.retention_hours * hour,
        },
        TopicSpec {
            name: a.topic.dlq_topic(),
            partitions: a.partitions.min(3),
            replication: a.replication_factor,
            retention_ms: a.dlq_retention_hours * hour,
        },
    ];
    for (name, outcome) in dashstream::provision::provision(&conn, &specs).await? {
        match outcome {
            Outcome::Created => println!("{name}: created"),
            Outcome::Unchanged => println!("{name}: exists, as asked"),
            Outcome::Differs(d) => println!("{name}: exists and differs: {}", d.join("; ")),
        }
    }
    Ok(())
}

async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let conn = connection(&a.kafka, &a.topic);
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
        thread_prefix: "thread".into(),
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
