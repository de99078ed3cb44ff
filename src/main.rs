use clap::Parser;
use plugin_operator::cli::{Cli, Command, CrdsArgs};
use plugin_operator::resources;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds(args) => match crds(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            plugin_operator::runtime::telemetry::init(args.log_json);
            match plugin_operator::run(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %err, "plugin-operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// `plugin-operator crds`: prints the CRDs, or writes one file per kind into `--out-dir`.
fn crds(args: &CrdsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = &args.out_dir else {
        print!("{}", resources::crds_yaml()?);
        return Ok(());
    };
    for (path, text) in resources::crd_files()? {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).map_err(|err| format!("writing {}: {err}", path.display()))?;
    }
    Ok(())
}
