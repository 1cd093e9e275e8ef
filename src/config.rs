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
    T::try_parse().unwrap_or_else(|e| exit_on_parse_error::<T>(e))
}

/// Prints a clap error and exits: 0 for help and version, [`EXIT_CONFIG`] otherwise (naming
/// the setting when the argument has an environment variable).
fn exit_on_parse_error<T: clap::CommandFactory>(e: clap::Error) -> ! {
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

/// The flag (no environment variable: the environment is what it checks) that makes a service
/// check its configuration and exit instead of starting.
pub const CHECK_CONFIG_FLAG: &str = "check-config";

/// Prefixes of the project's environment variables. With `--check-config`, a variable with one
/// of them that is not a setting of the binary is an error: a setting of another tier (the
/// predecessor's gateway was given a `KAFKA_GROUP_ID` it must not have), or a misspelling
/// that a normal start would silently ignore.
pub const SETTING_PREFIXES: [&str; 5] = ["KAFKA_", "REDIS_", "INGEST_", "GATEWAY_", "DASHSTREAM_"];

/// `cmd` with the `--check-config` flag added.
pub fn with_check_flag(cmd: clap::Command) -> clap::Command {
    cmd.arg(
        clap::Arg::new(CHECK_CONFIG_FLAG)
            .long(CHECK_CONFIG_FLAG)
            .action(clap::ArgAction::SetTrue)
            .help(
                "Check the settings as a start would (secret files and keys read), and that \
                 every KAFKA_/REDIS_/INGEST_/GATEWAY_/DASHSTREAM_ variable in the environment is \
                 one of them; print OK and exit 0, or exit 64 naming each problem. Connects to \
                 nothing.",
            ),
    )
}

/// Parses `args` as `T` with `--check-config` added; the flag's value comes second.
pub fn parse_checked_from<T, I, A>(args: I) -> Result<(T, bool), clap::Error>
where
    T: clap::Parser,
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = with_check_flag(T::command());
    let matches = cmd.try_get_matches_from_mut(args)?;
    let check = matches.get_flag(CHECK_CONFIG_FLAG);
    let args = T::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    Ok((args, check))
}

/// Every environment variable `cmd` (and its subcommands) reads.
pub fn setting_envs(cmd: &clap::Command) -> std::collections::BTreeSet<String> {
    let mut out: std::collections::BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(setting_envs(sub));
    }
    out
}

/// The variables of `vars` that look like the project's settings (see [`SETTING_PREFIXES`])
/// but are not read by `cmd`, one error each.
pub fn unknown_settings<I, K, V>(cmd: &clap::Command, vars: I) -> ConfigErrors
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<std::ffi::OsStr>,
{
    let known = setting_envs(cmd);
    let mut names: Vec<String> = vars
        .into_iter()
        .map(|(k, _)| k.as_ref().to_string_lossy().into_owned())
        .filter(|k| SETTING_PREFIXES.iter().any(|p| k.starts_with(p)))
        .filter(|k| !known.contains(k))
        .collect();
    names.sort();
    names.dedup();
    let mut errors = ConfigErrors::default();
    for name in names {
        errors.push(ConfigError {
            setting: name,
            problem: format!(
                "is set in the environment but is not a setting of `{}` (a setting of another \
                 binary, or a misspelling; a start would ignore it)",
                cmd.get_name()
            ),
        });
    }
    errors
}

/// The outcome of `--check-config`: the problems of `validated` and of the environment
/// together, or `None` when there are none.
pub fn check_result<S>(
    cmd: &clap::Command,
    validated: Result<S, ConfigErrors>,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Option<ConfigErrors> {
    let mut errors = validated.err().unwrap_or_default();
    errors.extend(unknown_settings(cmd, vars));
    (!errors.is_empty()).then_some(errors)
}

/// A service's start-up parse: the command line and environment as `T` (exit 64 naming the
/// setting on a parse error), validated by `validate` (exit 64 naming every problem). With
/// `--check-config` the process then exits: 0 after one `<name>: configuration OK` line, or 64
/// naming every problem of the settings and every stray variable ([`unknown_settings`]),
/// all at once. Without it, the validated settings are returned and the start goes on.
pub fn check_config_or_continue<T, S>(validate: impl FnOnce(&T) -> Result<S, ConfigErrors>) -> S
where
    T: clap::Parser,
{
    let (args, check) = parse_checked_from::<T, _, _>(std::env::args_os())
        .unwrap_or_else(|e| exit_on_parse_error::<T>(e));
    let validated = validate(&args);
    if !check {
        return validated.unwrap_or_else(|e| exit_config(&e));
    }
    let cmd = T::command();
    match check_result(&cmd, validated, std::env::vars_os()) {
        Some(errors) => exit_config(&errors),
        None => {
            println!("{}: configuration OK", cmd.get_name());
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::ffi::OsString;

    #[derive(Parser, Debug)]
    #[command(name = "svc")]
    struct Svc {
        #[arg(long, env = "REDIS_URL", default_value = "redis://x")]
        redis_url: String,
        #[arg(long, env = "GATEWAY_LISTEN")]
        listen: Option<String>,
    }

    fn vars(names: &[&str]) -> Vec<(OsString, OsString)> {
        names.iter().map(|n| (n.into(), "v".into())).collect()
    }

    #[test]
    fn the_check_flag_is_added_and_env_less() {
        // The flag beside a setting leaves the setting parsed (a flag, so the test's own
        // environment, which may set REDIS_URL or GATEWAY_LISTEN, does not matter).
        let (a, check) =
            parse_checked_from::<Svc, _, _>(["svc", "--check-config", "--listen", "a:1"]).unwrap();
        assert!(check);
        assert_eq!(a.listen.as_deref(), Some("a:1"));
        let (_, check) = parse_checked_from::<Svc, _, _>(["svc", "--listen", "a:1"]).unwrap();
        assert!(!check);
        let cmd = with_check_flag(Svc::command());
        let flag = cmd
            .get_arguments()
            .find(|a| a.get_id() == CHECK_CONFIG_FLAG)
            .unwrap();
        assert!(flag.get_env().is_none());
        // A bad flag is still a parse error (exit 64 in the binary).
        assert!(parse_checked_from::<Svc, _, _>(["svc", "--nope"]).is_err());
    }

    #[test]
    fn stray_settings_are_named_others_are_ignored() {
        let cmd = Svc::command();
        let e = unknown_settings(
            &cmd,
            vars(&[
                "REDIS_URL",
                "GATEWAY_LISTEN",
                "KAFKA_GROUP_ID",
                "GATEWAY_LISTEN_ADDR",
                "DASHSTREAM_X",
                "PATH",
                "RUST_LOG",
                "HOME",
            ]),
        );
        let names: Vec<_> = e.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            names,
            ["DASHSTREAM_X", "GATEWAY_LISTEN_ADDR", "KAFKA_GROUP_ID"]
        );
        assert!(e.0[0].problem.contains("`svc`"), "{}", e.0[0].problem);
    }

    #[test]
    fn subcommands_settings_count() {
        #[derive(Parser)]
        #[command(name = "cli")]
        struct Cli {
            #[command(subcommand)]
            c: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Provision {
                #[arg(long, env = "KAFKA_PARTITIONS")]
                p: Option<i32>,
            },
        }
        let envs = setting_envs(&Cli::command());
        assert!(envs.contains("KAFKA_PARTITIONS"));
    }

    #[test]
    fn the_check_reports_settings_and_environment_together() {
        let cmd = Svc::command();
        let mut bad = ConfigErrors::default();
        bad.push(ConfigError::new("REDIS_URL", "redis-url", "bad"));
        let e = check_result::<()>(&cmd, Err(bad), vars(&["KAFKA_BROKERS"])).unwrap();
        assert_eq!(e.0.len(), 2);
        assert!(check_result(&cmd, Ok(()), vars(&["REDIS_URL", "PATH"])).is_none());
    }
}
