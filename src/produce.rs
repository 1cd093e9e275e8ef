//! The synthetic producer behind `dashstream produce`, also used by tests and benchmarks:
//! events for a set of threads (sequenced per thread, keyed by thread id) at a rate, single or
//! batched, raw or zstd, with optional injected faults of every kind the ingest must reject.

use crate::codec::encode_record;
use crate::kafka::KafkaConnection;
use crate::proto::{envelope::Body, Envelope, Event, EventBatch, Header};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::{Duration, Instant};

/// A kind of invalid record the producer can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Bytes that are not a protobuf envelope.
    Garbage,
    /// An unknown frame marker byte.
    BadMarker,
    /// A zstd marker followed by bytes that are not zstd.
    BadZstd,
    /// An event whose header has no thread id.
    MissingThreadId,
    /// An event with a schema version newer than supported.
    FutureSchema,
    /// A record larger than the ingest's record limit.
    Oversize,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Garbage,
        Fault::BadMarker,
        Fault::BadZstd,
        Fault::MissingThreadId,
        Fault::FutureSchema,
        Fault::Oversize,
    ];

    /// The DLQ reason the ingest gives this fault.
    pub fn expected_reason(self) -> crate::codec::Reason {
        use crate::codec::Reason;
        match self {
            Fault::Garbage => Reason::Decode,
            Fault::BadMarker => Reason::BadMarker,
            Fault::BadZstd => Reason::Decompress,
            Fault::MissingThreadId => Reason::MissingThreadId,
            Fault::FutureSchema => Reason::UnsupportedSchemaVersion,
            Fault::Oversize => Reason::TooLarge,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub topic: String,
    /// Distinct thread ids (record keys).
    pub threads: usize,
    /// Distinct tenant ids.
    pub tenants: usize,
    /// Approximate payload size of each event, in bytes.
    pub payload_bytes: usize,
    /// Stop after this many events (`None`: until `duration`, or forever).
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Events per second (`None`: as fast as the broker takes them).
    pub rate: Option<f64>,
    pub compress: bool,
    /// Events per record: 1 sends single events, more sends `EventBatch`es.
    pub batch: usize,
    /// Inject one record of each listed fault kind, in turn, every `fault_every` records.
    pub faults: Vec<Fault>,
    pub fault_every: u64,
    /// Size of an `Oversize` fault record.
    pub oversize_bytes: usize,
    /// Keep (partition, offset) of every delivered record in the report.
    pub record_deliveries: bool,
    /// Prefix of generated thread ids (tests use a unique one).
    pub thread_prefix: String,
}

impl Default for ProduceOptions {
    fn default() -> Self {
        Self {
            topic: crate::DEFAULT_TOPIC.into(),
            threads: 100,
            tenants: 4,
            payload_bytes: 200,
            count: None,
            duration: None,
            rate: Some(100.0),
            compress: false,
            batch: 1,
            faults: Vec::new(),
            fault_every: 100,
            oversize_bytes: 600 * 1024,
            record_deliveries: false,
            thread_prefix: "thread".into(),
        }
    }
}

/// One record the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    /// Events in the record (0 for a fault record).
    pub events: u32,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Default)]
pub struct ProduceReport {
    pub records: u64,
    pub events: u64,
    pub faults: u64,
    pub elapsed: Duration,
    pub deliveries: Vec<Delivered>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("creating the Kafka producer: {0}")]
    Create(KafkaError),
    #[error("delivering to {topic}: {error}")]
    Delivery { topic: String, error: KafkaError },
}

/// Builds the producer every project component uses for its own writes.
pub fn producer(conn: &KafkaConnection) -> Result<FutureProducer, KafkaError> {
    producer_config(conn).create()
}

/// The settings of [`producer`], for a producer that changes some of them.
pub fn producer_config(conn: &KafkaConnection) -> rdkafka::ClientConfig {
    let mut c = conn.client_config();
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.max.bytes", "2000000");
    c
}

/// Generates events and fault records.
pub struct Generator {
    opts: ProduceOptions,
    seq: Vec<u64>,
    next_thread: usize,
    next_fault: usize,
    records: u64,
    pad: String,
}

impl Generator {
    pub fn new(opts: ProduceOptions) -> Self {
        let threads = opts.threads.max(1);
        Self {
            pad: "x".repeat(opts.payload_bytes.saturating_sub(40)),
            seq: vec![0; threads],
            next_thread: 0,
            next_fault: 0,
            records: 0,
            opts,
        }
    }

    fn thread_id(&self, t: usize) -> String {
        format!("{}-{t}", self.opts.thread_prefix)
    }

    fn event(&mut self, t: usize) -> Event {
        self.seq[t] += 1;
        let seq = self.seq[t];
        let payload = format!(r#"{{"thread":{t},"seq":{seq},"pad":"{}"}}"#, self.pad);
        Event {
            header: Some(Header {
                message_id: uuid::Uuid::new_v4().as_bytes().to_vec().into(),
                timestamp_us: crate::now_us(),
                tenant_id: format!("tenant-{}", t % self.opts.tenants.max(1)),
                thread_id: self.thread_id(t),
                sequence: seq,
                event_type: ["node_start", "token", "quality_score"][(seq % 3) as usize].into(),
                schema_version: 1,
            }),
            payload: payload.into_bytes().into(),
            content_type: "application/json".into(),
        }
    }

    /// The next record: (key, value, events in it, fault).
    pub fn next_record(&mut self) -> (String, Vec<u8>, u32, Option<Fault>) {
        self.records += 1;
        let t = self.next_thread;
        self.next_thread = (self.next_thread + 1) % self.seq.len();
        let key = self.thread_id(t);
        if !self.opts.faults.is_empty() && self.records % self.opts.fault_every.max(1) == 0 {
            let fault = self.opts.faults[self.next_fault % self.opts.faults.len()];
            self.next_fault += 1;
            return (key, self.fault_value(fault), 0, Some(fault));
        }
        let n = self.opts.batch.max(1);
        let envelope = if n == 1 {
            Envelope {
                body: Some(Body::Event(self.event(t))),
            }
        } else {
            Envelope {
                body: Some(Body::Batch(EventBatch {
                    events: (0..n).map(|_| self.event(t)).collect(),
                })),
            }
        };
        (
            key,
            encode_record(&envelope, self.opts.compress),
            n as u32,
            None,
        )
    }

    /// A record value carrying `fault`.
    pub fn fault_value(&mut self, fault: Fault) -> Vec<u8> {
        let single = |e: Event| Envelope {
            body: Some(Body::Event(e)),
        };
        match fault {
            Fault::Garbage => {
                let mut v = vec![0x00];
                v.extend([0xff; 24]);
                v
            }
            Fault::BadMarker => {
                let mut v = encode_record(&single(self.probe_event()), false);
                v[0] = 0x7f;
                v
            }
            Fault::BadZstd => vec![0x01, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x01, 0x02],
            Fault::MissingThreadId => {
                let mut e = self.probe_event();
                e.header.as_mut().expect("header").thread_id.clear();
                encode_record(&single(e), false)
            }
            Fault::FutureSchema => {
                let mut e = self.probe_event();
                e.header.as_mut().expect("header").schema_version = 99;
                encode_record(&single(e), false)
            }
            Fault::Oversize => {
                let mut e = self.probe_event();
                e.payload = vec![b'z'; self.opts.oversize_bytes].into();
                encode_record(&single(e), false)
            }
        }
    }

    /// An unsequenced event used inside fault records (it never reaches a stream).
    fn probe_event(&self) -> Event {
        Event {
            header: Some(Header {
                message_id: uuid::Uuid::new_v4().as_bytes().to_vec().into(),
                timestamp_us: crate::now_us(),
                tenant_id: "tenant-0".into(),
                thread_id: self.thread_id(0),
                sequence: 0,
                event_type: "fault".into(),
                schema_version: 1,
            }),
            payload: b"{}".to_vec().into(),
            content_type: "application/json".into(),
        }
    }
}

/// Produces until the count or duration is reached (or `stop` resolves), waiting for every
/// delivery. Deliveries are kept bounded in flight.
pub async fn run(
    conn: &KafkaConnection,
    opts: ProduceOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<ProduceReport, ProduceError> {
    let producer = producer(conn).map_err(ProduceError::Create)?;
    let topic = opts.topic.clone();
    let mut gen = Generator::new(opts.clone());
    let mut report = ProduceReport::default();
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    const MAX_INFLIGHT: usize = 20_000;
    tokio::pin!(stop);
    loop {
        if opts.count.is_some_and(|c| report.events >= c)
            || opts.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(rate) = opts.rate {
            let due = start + Duration::from_secs_f64(report.events as f64 / rate.max(0.001));
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        while inflight.len() >= MAX_INFLIGHT {
            if let Some(r) = inflight.next().await {
                record_delivery(&mut report, r, &topic, opts.record_deliveries)?;
            }
        }
        let (key, value, events, fault) = gen.next_record();
        let fut = loop {
            let rec = FutureRecord::to(&topic).key(&key).payload(&value);
            match producer.send_result(rec) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if let Some(r) = inflight.next().await {
                        record_delivery(&mut report, r, &topic, opts.record_deliveries)?;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((error, _)) => return Err(ProduceError::Delivery { topic, error }),
            }
        };
        inflight.push(async move { (fut.await, events, fault) });
        report.events += events as u64;
        report.records += 1;
        if fault.is_some() {
            report.faults += 1;
        }
    }
    while let Some(r) = inflight.next().await {
        record_delivery(&mut report, r, &topic, opts.record_deliveries)?;
    }
    let _ = producer.flush(Duration::from_secs(30));
    report.elapsed = start.elapsed();
    Ok(report)
}

type DeliveryOutcome = (
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
    u32,
    Option<Fault>,
);

fn record_delivery(
    report: &mut ProduceReport,
    (result, events, fault): DeliveryOutcome,
    topic: &str,
    keep: bool,
) -> Result<(), ProduceError> {
    match result {
        Ok(Ok(d)) => {
            if keep {
                report.deliveries.push(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                    events,
                    fault,
                });
            }
            Ok(())
        }
        Ok(Err((error, _))) => Err(ProduceError::Delivery {
            topic: topic.into(),
            error,
        }),
        Err(_) => Err(ProduceError::Delivery {
            topic: topic.into(),
            error: KafkaError::Canceled,
        }),
    }
}
