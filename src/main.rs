//! The `herald` binary: parse the command line, set up logging, run.

use clap::Parser;

use herald::config::{Cli, Command};
use herald::{shutdown, telemetry, Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Openapi) => {
            println!("{}", herald::api::openapi_json());
            return Ok(());
        }
        Some(Command::Serve(config)) => config,
        None => cli.serve,
    };
    telemetry::init(config.log_format);
    let app = Application::build(config).await?;
    shutdown::cancel_on_signal(app.shutdown_token());
    app.run().await
}
