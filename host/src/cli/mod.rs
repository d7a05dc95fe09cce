//! Command-line commands. Each subcommand lives in its own module; this one parses
//! arguments and dispatches.
//!
//! **API boundary:** the CLI turns flags and environment variables into the library's
//! config structs and exit codes; no other module reads the environment.

mod artifacts;
pub mod config;
mod demo;
mod job;
mod module;
mod run;
mod setup;
pub mod status;
pub mod submit;
mod task;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::observe::logs::LogFormat;

/// Exit codes shared by the commands (documented in `--help`).
pub mod exit {
    /// The task reported a failure (`run` returned err).
    pub const TASK_FAILED: u8 = 1;
    /// The module is not a usable task module.
    pub const BAD_MODULE: u8 = 3;
    /// The task trapped or hit a limit; its checkpoint is kept.
    pub const TRAPPED: u8 = 4;
    /// Another worker owns the job.
    pub const CONFLICT: u8 = 5;
    /// Storage failed.
    pub const STORAGE: u8 = 6;
    /// Interrupted (Ctrl-C / SIGTERM); the checkpoint is durable.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "taskhost",
    version,
    about = "Runs WebAssembly task modules for long jobs on interruptible nodes, with checkpoints.",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as readable text or as one JSON object per line (`json`: SaladCloud's log
    /// explorer makes each field queryable). `RUST_LOG` sets the filter either way.
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
// Each variant takes its help from its arguments struct's doc comment.
pub enum Command {
    Setup(setup::SetupArgs),
    Module(module::ModuleArgs),
    Submit(submit::SubmitArgs),
    Worker(worker::WorkerArgs),
    Status(status::StatusArgs),
    Run(run::RunArgs),
    Demo(demo::DemoArgs),
    Job(job::JobArgs),
    Artifacts(artifacts::ArtifactsArgs),
    Task(task::TaskArgs),
}

/// SaladCloud's names for the machine and the container group, added to every JSON log
/// line when the container has them: (variable, field).
pub const SALAD_FIELDS: &[(&str, &str)] = &[
    ("SALAD_MACHINE_ID", "salad_machine_id"),
    ("SALAD_CONTAINER_GROUP_ID", "salad_container_group_id"),
];

/// Logs to stderr in `--log-format`; `RUST_LOG` overrides the default level (`info`;
/// `warn` for the demo, whose workers log to files).
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fields = SALAD_FIELDS
        .iter()
        .filter_map(|(var, field)| {
            let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
            Some(((*field).to_owned(), value))
        })
        .collect();
    crate::observe::logs::init(cli.log_format, filter, fields);
}

pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Setup(args) => setup::main(args).await,
        Command::Module(args) => module::main(args).await,
        Command::Submit(args) => submit::main(args).await,
        Command::Worker(args) => worker::main(args).await,
        Command::Status(args) => status::main(args).await,
        Command::Run(args) => run::main(args).await,
        Command::Demo(args) => demo::main(args).await,
        Command::Job(args) => job::main(args).await,
        Command::Artifacts(args) => artifacts::main(args).await,
        Command::Task(args) => task::main(args).await,
    }
}

/// Cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("can install a SIGINT handler");
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!(
            "shutdown requested: stopping tasks at their next yield (signal again to exit at once)"
        );
        t.cancel();
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: exiting at once; unflushed work is redone elsewhere");
        std::process::exit(130);
    });
    token
}
