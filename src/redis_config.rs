//! Redis settings shared by the ingest and gateway tiers, and the connection they open.

use crate::config::{ConfigError, ConfigErrors};
use clap::Args;
use std::time::Duration;

pub const ENV_REDIS_URL: &str = "REDIS_URL";
pub const ENV_REDIS_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";
pub const ENV_REDIS_TIMEOUT_MS: &str = "REDIS_COMMAND_TIMEOUT_MS";

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS).
    #[arg(long = "redis-url", env = ENV_REDIS_URL, default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Prefix of every key this deployment writes (`<prefix>:<topic>:<partition>`).
    #[arg(long = "redis-key-prefix", env = ENV_REDIS_KEY_PREFIX, default_value = "dashstream")]
    pub key_prefix: String,
    /// Deadline of one Redis command, in milliseconds.
    #[arg(long = "redis-command-timeout-ms", env = ENV_REDIS_TIMEOUT_MS, default_value_t = 5000)]
    pub command_timeout_ms: u64,
}

/// Validated Redis settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub client: redis::Client,
    pub key_prefix: String,
    pub command_timeout: Duration,
}

impl RedisArgs {
    pub fn validate(&self) -> Result<RedisSettings, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let client = match redis::Client::open(self.url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(ConfigError::new(
                    ENV_REDIS_URL,
                    "redis-url",
                    format!("{:?} is not a Redis URL: {e}", self.url),
                ));
                None
            }
        };
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            errors.push(ConfigError::new(
                ENV_REDIS_KEY_PREFIX,
                "redis-key-prefix",
                "must be non-empty and contain no whitespace",
            ));
        }
        let command_timeout = crate::config::positive_ms(
            ENV_REDIS_TIMEOUT_MS,
            "redis-command-timeout-ms",
            self.command_timeout_ms,
            &mut errors,
        );
        match client {
            Some(client) if errors.is_empty() => Ok(RedisSettings {
                client,
                key_prefix: self.key_prefix.clone(),
                command_timeout,
            }),
            _ => Err(errors),
        }
    }
}

impl RedisSettings {
    /// A multiplexed connection that reconnects by itself; every command has the deadline.
    pub async fn connect(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        self.connect_for_blocking(Duration::ZERO).await
    }

    /// Like [`Self::connect`], for a connection that also runs blocking commands of up to
    /// `block` (its response deadline is the command timeout plus `block`).
    pub async fn connect_for_blocking(
        &self,
        block: Duration,
    ) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.command_timeout + block))
            .set_connection_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
    }
}
