//! The `herald` command line: `serve` (the default), `openapi`, `submit` and
//! `watch`. A binary with kinds of its own calls [`main`] with them and keeps
//! all of it.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command};
use crate::{client, shutdown, telemetry, Application, Kinds};

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
