use clap::Parser;
use plugin_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match plugin_operator::resources::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            plugin_operator::runtime::telemetry::init(args.log_json);
            match plugin_operator::run(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %err, "plugin-operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
