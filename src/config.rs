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
    /// A setting that is a command-line flag only.
    pub fn flag(flag: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: format!("--{flag}"),
            problem: problem.into(),
        }
    }

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
pub fn parse_or_exit<T: clap::Parser + clap::CommandFactory>() -> T {
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
            if code == EXIT_CONFIG {
                if let Some(setting) = setting_of_error::<T>(&e) {
                    eprintln!("invalid configuration: {setting}:");
                }
            }
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// The `ENV (--flag)` name of the argument a clap error is about, if it has an env variable.
fn setting_of_error<T: clap::CommandFactory>(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?.trim_start_matches("--");
    fn find(cmd: &clap::Command, flag: &str) -> Option<String> {
        for a in cmd.get_arguments() {
            if a.get_long() == Some(flag) {
                let env = a.get_env()?.to_string_lossy().into_owned();
                return Some(format!("{env} (--{flag})"));
            }
        }
        cmd.get_subcommands().find_map(|c| find(c, flag))
    }
    find(&T::command(), flag)
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

/// Reads a secret from a file (a mounted Kubernetes secret, a Docker secret): its text without
/// one trailing newline. The error names the file, never its content.
pub fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text)
        .to_string();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text)
}
