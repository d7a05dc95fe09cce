//! Command-line commands. Each subcommand lives in its own module; this one parses
//! arguments and dispatches.
//!
//! **API boundary:** the CLI turns flags and environment variables into the library's
//! config structs and exit codes; the library reads no environment (`.ci/run` checks it).
//! Every environment variable read here is also a flag, declared in one shared args group
//! per concern (`config.rs`: the store, the queue, topics, the subscription, per-run limits,
//! file limits, the cache) and flattened into the commands that need it.

mod artifacts;
mod autoscale;
pub mod config;
mod dead_letter;
mod demo;
mod job;
mod job_control;
mod module;
mod nn;
mod preflight;
mod requeue;
mod run;
mod selfcheck;
mod setup;
pub mod status;
pub mod submit;
mod task;
pub mod unparsed;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use taskhost::observe::logs::LogFormat;

/// How long the process waits, once a command has returned, for blocking work still running
/// (a compile, a file write) before it exits without it: 1 s.
pub const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Exit codes, one per meaning, shared by the commands (listed in `taskhost --help` by
/// [`exit::HELP`] and in the README).
pub mod exit {
    /// The job failed: the task reported a failure (`run`), or a result is wrong or missing
    /// (`demo`).
    pub const TASK_FAILED: u8 = 1;
    /// Bad usage: an unknown flag or subcommand, a value that does not parse (clap's code; for
    /// `worker` only a flag's value: a variable's is a misconfiguration, `unparsed.rs`).
    pub const USAGE: u8 = 2;
    /// The module is not a usable task module (`run`, `module push`).
    pub const BAD_MODULE: u8 = 3;
    /// The task trapped or hit a limit; its checkpoint is kept (`run`).
    pub const TRAPPED: u8 = 4;
    /// Another worker owns the job (`run`), or the job is running or changed while it was
    /// being reset (`job reset`); someone else moved the tag meanwhile (`module push --tag`,
    /// `module tag`); a job still needs the module (`module rm`); a job was done, cancelled,
    /// paused or running and was left alone (`job cancel` / `pause` / `resume` / `retry`,
    /// `dead-letter replay`).
    pub const CONFLICT: u8 = 5;
    /// Storage failed (`run`; the job control commands, naming what was not recorded).
    pub const STORAGE: u8 = 6;
    /// Any other error, said in one sentence: a setting out of range or missing, a service
    /// that cannot be reached or refuses, a file that cannot be read, a job's checkpoint that
    /// cannot be used (`run`).
    pub const ERROR: u8 = 7;
    /// What was asked for does not exist (yet): a job that is not done, an artifact it does
    /// not have (`artifacts`); a job without stored work (`job resume`, `job retry`); no dead
    /// letter naming the job (`dead-letter replay`).
    pub const NOT_FOUND: u8 = 8;
    /// The user answered no; nothing was changed (`job reset`, `job cancel`, `job pause`,
    /// `module rm`, `module prune`, `dead-letter replay --all`).
    pub const DECLINED: u8 = 9;
    /// Interrupted (Ctrl-C / SIGTERM; a second signal for every command); a checkpoint
    /// is durable.
    pub const INTERRUPTED: u8 = 130;

    /// The exit codes as `--help` lists them.
    pub const HELP: &str = "\
Exit codes:
  0    success
  1    the job failed: the task reported a failure (run); a result is wrong or missing (demo)
  2    bad usage: an unknown flag or subcommand, a value that does not parse (worker:
       a flag's; a variable's is a misconfiguration, see --exit-on-misconfig)
  3    not a usable task module (run, module push)
  4    the task trapped or hit a limit; its checkpoint is kept, run again to resume (run)
  5    another worker owns the job (run); the job is running or changed (job reset);
       the tag was moved by someone else (module push --tag, module tag); a job still
       needs the module (module rm); a job was done, cancelled, paused or running and
       was left alone (job cancel/pause/resume/retry, dead-letter replay)
  6    storage failed; nothing is lost, try again (run, job cancel/pause/resume/retry,
       dead-letter replay: the message names what was not recorded)
  7    any other error: a setting out of range or missing, a service that cannot be
       reached or refuses, a file that cannot be read, a job's checkpoint that cannot
       be used (run) (the message says which)
  8    not found: the job is not done, or has no such artifact (artifacts); no stored
       work (job resume, job retry); no dead letter names the job (dead-letter replay)
  9    declined: the answer was no, nothing was changed (job reset, job cancel, job pause,
       module rm, module prune, dead-letter replay --all)
  130  interrupted (Ctrl-C, SIGTERM); the checkpoint is saved";
}

#[derive(Parser, Debug)]
#[command(
    name = "taskhost",
    version,
    about = "Runs WebAssembly task modules for long jobs on interruptible nodes, with checkpoints.",
    long_about = None,
    after_help = exit::HELP,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The log filter (tracing's `EnvFilter` syntax, e.g. `debug` or `taskhost=debug`);
    /// default: `info` (`demo`: `warn`, its workers log to files). Logs go to stderr.
    #[arg(long = "log", env = "RUST_LOG", value_name = "FILTER", global = true)]
    pub log: Option<String>,
    /// Log lines as readable text or as one JSON object per line (`json`: SaladCloud's log
    /// explorer makes each field queryable). The filter applies either way.
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: LogFormat,
    /// SaladCloud's machine id, set by SaladCloud in every container: added to every JSON
    /// log line as `salad_machine_id`.
    #[arg(long, env = "SALAD_MACHINE_ID", global = true, hide = true)]
    pub salad_machine_id: Option<String>,
    /// SaladCloud's container group id: added to every JSON log line as
    /// `salad_container_group_id`.
    #[arg(long, env = "SALAD_CONTAINER_GROUP_ID", global = true, hide = true)]
    pub salad_container_group_id: Option<String>,
}

#[derive(Subcommand, Debug)]
// Each variant takes its help from its arguments struct's doc comment.
// Parsed once per process: the size of the largest variant (the worker's settings) costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Setup(setup::SetupArgs),
    Module(module::ModuleArgs),
    Submit(submit::SubmitArgs),
    // Boxed: the worker's settings are by far the largest.
    Worker(Box<worker::WorkerArgs>),
    Status(status::StatusArgs),
    Run(run::RunArgs),
    Demo(demo::DemoArgs),
    Job(job::JobArgs),
    DeadLetter(dead_letter::DeadLetterArgs),
    Artifacts(artifacts::ArtifactsArgs),
    Task(task::TaskArgs),
    Autoscale(autoscale::AutoscaleArgs),
}

/// Logs to stderr in `--log-format`; `--log` (`RUST_LOG`) overrides the default level
/// (`info`; `warn` for the demo, whose workers log to files). A filter that does not parse
/// falls back to the default, with a warning that says so. JSON lines carry SaladCloud's
/// machine and container group ids when the container has them.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    let (filter, refused) = match cli.log.as_deref().map(|f| (f, EnvFilter::try_new(f))) {
        Some((_, Ok(filter))) => (filter, None),
        Some((given, Err(e))) => (EnvFilter::new(default), Some((given, e))),
        None => (EnvFilter::new(default), None),
    };
    let fields = [
        ("salad_machine_id", &cli.salad_machine_id),
        ("salad_container_group_id", &cli.salad_container_group_id),
    ]
    .into_iter()
    .filter_map(|(field, value)| {
        let value = value.as_deref().filter(|v| !v.is_empty())?;
        Some((field.to_owned(), value.to_owned()))
    })
    .collect();
    taskhost::observe::logs::init(cli.log_format, filter, fields);
    if let Some((given, e)) = refused {
        tracing::warn!(filter = %taskhost::inert::Inert(given), error = %e, level = default, "RUST_LOG (--log) does not parse; logging at the default level");
    }
}

pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Setup(args) => setup::main(args).await,
        Command::Module(args) => module::main(args).await,
        Command::Submit(args) => submit::main(args).await,
        Command::Worker(args) => {
            // On SaladCloud (it sets SALAD_MACHINE_ID in every container) the worker uses
            // the instance metadata service.
            let on_salad = cli.salad_machine_id.is_some_and(|id| !id.is_empty());
            worker::main(*args, on_salad).await
        }
        Command::Status(args) => status::main(args).await,
        Command::Run(args) => run::main(args).await,
        Command::Demo(args) => demo::main(args).await,
        Command::Job(args) => job::main(args).await,
        Command::DeadLetter(args) => dead_letter::main(args).await,
        Command::Artifacts(args) => artifacts::main(args).await,
        Command::Task(args) => task::main(args).await,
        Command::Autoscale(args) => autoscale::main(args).await,
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
        std::process::exit(exit::INTERRUPTED.into());
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` lists every exit code, each with its own meaning.
    #[test]
    fn help_lists_every_exit_code_once() {
        let codes = [
            0,
            exit::TASK_FAILED,
            exit::USAGE,
            exit::BAD_MODULE,
            exit::TRAPPED,
            exit::CONFLICT,
            exit::STORAGE,
            exit::ERROR,
            exit::NOT_FOUND,
            exit::DECLINED,
            exit::INTERRUPTED,
        ];
        let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len(), "two meanings share a code");
        let listed: Vec<u8> = exit::HELP
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(listed, codes, "{}", exit::HELP);
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        // clap's own usage errors use the code listed for them.
        let err = Cli::try_parse_from(["taskhost", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn the_command_line_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
