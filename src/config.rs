//! Configuration errors and the exit code for them. Every service and command parses its
//! settings once at start-up, collects every problem, and exits with [`EXIT_CONFIG`] and a
//! message naming each bad setting (flag and environment variable).

use std::fmt;

/// `EX_USAGE` from sysexits.h: the process was started with a bad configuration.
pub const EXIT_CONFIG: i32 = 64;

/// One bad setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting as an operator knows it, e.g. `KAFKA_BROKERS (--kafka-brokers)`.
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(env: &str, flag: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: format!("{env} (--{flag})"),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

/// All problems found in one configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Ok(value)` when no problem was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses the command line (and environment) with clap; a parse error exits with
/// [`EXIT_CONFIG`] (help and version exit 0).
pub fn parse_or_exit<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(v) => v,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_CONFIG,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Prints the problems and exits with [`EXIT_CONFIG`].
pub fn exit_config(errors: &ConfigErrors) -> ! {
    eprint!("{errors}");
    std::process::exit(EXIT_CONFIG);
}

/// Parses a duration given in milliseconds, naming the setting on error.
pub fn positive_ms(
    env: &str,
    flag: &str,
    value: u64,
    errors: &mut ConfigErrors,
) -> std::time::Duration {
    if value == 0 {
        errors.push(ConfigError::new(env, flag, "must be greater than 0"));
    }
    std::time::Duration::from_millis(value)
}
