//! `dashstream provision`: creates the event topic and its DLQ topic (which keeps records
//! longer) with the given partitions and retention. Idempotent: an existing topic is left as it
//! is and every difference from what was asked is reported.

use crate::kafka::KafkaConnection;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub retention_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Existed with exactly the requested settings.
    Unchanged,
    /// Existed; each string says what differs.
    Differs(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("Kafka admin: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates each topic, or compares it with the spec when it exists.
pub async fn provision(
    conn: &KafkaConnection,
    specs: &[TopicSpec],
) -> Result<Vec<(String, Outcome)>, ProvisionError> {
    let admin: AdminClient<DefaultClientContext> = conn.client_config().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
    let new: Vec<NewTopic> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication),
            )
            .set("retention.ms", r)
        })
        .collect();
    let results = admin.create_topics(new.iter(), &opts).await?;
    let mut out = Vec::new();
    for (spec, r) in specs.iter().zip(results) {
        match r {
            Ok(_) => out.push((spec.name.clone(), Outcome::Created)),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((spec.name.clone(), compare(&admin, &opts, spec).await?))
            }
            Err((topic, code)) => return Err(ProvisionError::Create { topic, code }),
        }
    }
    Ok(out)
}

async fn compare(
    admin: &AdminClient<DefaultClientContext>,
    opts: &AdminOptions,
    spec: &TopicSpec,
) -> Result<Outcome, ProvisionError> {
    let mut diffs = Vec::new();
    // Right after a topic is created, a broker can still answer with no partitions for it
    // (its metadata is not propagated yet): a topic that exists has at least one, so ask
    // again for a while before comparing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let md = loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(&spec.name), Duration::from_secs(10))?;
        let settled = md
            .topics()
            .first()
            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
        if settled || std::time::Instant::now() >= deadline {
            break md;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(t) = md.topics().first() {
        let partitions = t.partitions().len() as i32;
        if partitions != spec.partitions {
            diffs.push(format!(
                "partitions: has {partitions}, asked {}",
                spec.partitions
            ));
        }
        if let Some(p) = t.partitions().first() {
            let rf = p.replicas().len() as i32;
            if rf != spec.replication {
                diffs.push(format!("replication: has {rf}, asked {}", spec.replication));
            }
        }
    }
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], opts)
        .await?;
    for c in configs.into_iter().flatten() {
        if let Some(e) = c.get("retention.ms") {
            let have = e.value.clone().unwrap_or_default();
            if have != spec.retention_ms.to_string() {
                diffs.push(format!(
                    "retention.ms: has {have}, asked {}",
                    spec.retention_ms
                ));
            }
        }
    }
    Ok(if diffs.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Differs(diffs)
    })
}
