//! The `ingest` binary: parse settings (exit 64 naming any bad one), set up tracing, bind the
//! operations port, run until SIGTERM/SIGINT, drain and exit.

use dashstream::config::{check_config_or_continue, EXIT_CONFIG};
use dashstream_ingest::IngestArgs;
use std::process::ExitCode;

// No #[global_allocator]: the system allocator (glibc) is kept. jemalloc (Rust allocations
// only, or replacing malloc for librdkafka too) and mimalloc were measured with
// bench/ingest-throughput.sh and used no less CPU per event; allocation is ~9% of the ingest's
// instructions since the zero-copy decode (docs/BENCHMARKS.md, "Allocator").

#[tokio::main]
async fn main() -> ExitCode {
    // With --check-config this exits here: 0 when the settings are good, 64 naming each problem.
    let settings = check_config_or_continue(IngestArgs::validate);
    dashstream::telemetry::init("info,rdkafka=warn");
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "INGEST_LISTEN (--listen): cannot bind {}: {e}",
                settings.listen
            );
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    tracing::info!(addr = %settings.listen, "operations endpoints listening");
    let shutdown = dashstream::shutdown::on_signal();
    let deadline = settings.options.drain_timeout + std::time::Duration::from_secs(10);
    let stop = shutdown.clone();
    let run = dashstream_ingest::run(settings, prometheus::Registry::new(), listener, shutdown);
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        _ = async { stop.cancelled().await; tokio::time::sleep(deadline).await } => {
            tracing::error!(?deadline, "shutdown deadline passed; exiting");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            eprintln!("{e}");
            tracing::error!(error = %e, "ingest cannot start");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            tracing::error!(error = %e, "ingest failed");
            ExitCode::FAILURE
        }
    }
}
