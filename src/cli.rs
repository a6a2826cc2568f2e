//! The `herald` command line: `serve` (the default), `openapi`, `submit` and
//! `watch`. A binary with kinds of its own calls [`main`] with them and keeps
//! all of it.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command};
use crate::{client, shutdown, telemetry, Application, Kinds};

/// How many tasks a busy worker runs between two looks at the sockets and
/// timers (tokio's default is 61). A job's event wakes every subscriber at
/// once; with the default, the sockets that became ready meanwhile (most
/// of all the connections that the clients of a finished job close) are
/// served between those subscribers' writes, and the last subscribers of
/// a fan-out wait for the teardowns. Measured with the shared harness
/// (10,000 streams, 10 jobs, T = 1000 ms, p99): 30–37 ms at the default,
/// 17–21 ms at 1000–2000 (nchan: 15–20 ms in the same runs); at
/// T = 200 ms, 34–57 against 18–24 ms; jobs/s unchanged. An idle worker
/// still looks at once; a saturated one looks after at most this many
/// tasks (about 20 ms of work).
const EVENT_INTERVAL: u32 = 2000;

/// Parses the command line and runs it with `kinds`:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     herald::cli::main(herald::Kinds::builtin())
/// }
/// ```
pub fn main(kinds: Kinds) -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .event_interval(EVENT_INTERVAL)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, kinds))
}

async fn run(cli: Cli, kinds: Kinds) -> ExitCode {
    let config = match cli.command {
        Some(Command::Openapi) => {
            println!("{}", crate::openapi_json(&kinds));
            return ExitCode::SUCCESS;
        }
        Some(Command::Submit {
            kind,
            input,
            follow,
            client,
        }) => return client::submit(&client, &kind, &input, follow).await,
        Some(Command::Watch { job_id, client }) => return client::watch(&client, &job_id).await,
        Some(Command::Serve(config)) => *config,
        None => cli.serve,
    };
    telemetry::init(config.log_format);
    let serve = async {
        let app = Application::build_with(config, kinds).await?;
        shutdown::cancel_on_signal(app.shutdown_token());
        app.run().await
    };
    match serve.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "herald stopped with an error");
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
