//! The `gateway` binary: parse settings (exit 64 naming any bad one), set up tracing, bind,
//! serve until SIGTERM/SIGINT, drain clients and exit.

use dashstream::config::{check_config_or_continue, EXIT_CONFIG};
use dashstream_gateway::GatewayArgs;
use std::process::ExitCode;

/// mimalloc: the fan-out allocates and frees many small, short-lived buffers (frames, events,
/// reply values) across threads, where it costs less CPU than glibc's malloc
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // With --check-config this exits here: 0 when the settings are good, 64 naming each problem.
    let settings = check_config_or_continue(GatewayArgs::validate);
    dashstream::telemetry::init("info");
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "GATEWAY_LISTEN (--listen): cannot bind {}: {e}",
                settings.listen
            );
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    tracing::info!(addr = %settings.listen, "listening for /ws and the operations endpoints");
    let shutdown = dashstream::shutdown::on_signal();
    match dashstream_gateway::run(settings, prometheus::Registry::new(), listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            tracing::error!(error = %e, "gateway stopped: a setting to fix");
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            ExitCode::FAILURE
        }
    }
}
