//! The `taskhost` command line; see `taskhost --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = taskhost::cli::Cli::parse();
    taskhost::cli::init_logging(&cli);
    // In JSON, every line of stderr is a JSON object, the last error too.
    let json = cli.log_format == taskhost::observe::logs::LogFormat::Json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(taskhost::cli::main(cli)) {
        Ok(code) => code,
        Err(e) if json => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
