//! `taskhost worker` with a setting from the environment that does not parse
//! (`WORKER_SLOTS=eight`, `LOG_FORMAT=xml`): a misconfiguration like a setting out of range
//! (docs/design.md §6), waited for, never clap's usage error. On SaladCloud every node has the
//! same environment, so an exit there would be a crash loop on every node.
//!
//! The settings that do not parse are found by parsing again without them, one at a time,
//! until the rest parses: the worker then has every other setting as clap read it
//! (`METRICS_ADDR` to serve the probes on, `EXIT_ON_MISCONFIG`, `LOG_FORMAT`); a setting that
//! does not parse counts as unset. A value typed on the command line (`--slots eight`) is still
//! clap's usage error (exit 2): a person is there to read it.
//!
//! Only a redeploy can change the environment: the worker stays up, live and started but not
//! ready, logging the sentence once a minute (`preflight::bad_setting`, as for a setting out of
//! range), until SIGTERM (exit 0), or exits 7 at once with `EXIT_ON_MISCONFIG` (clap reads it: `true` or `false`; any other value is itself a setting
//! that does not parse, so the worker waits).

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, CommandFactory, FromArgMatches};
use taskhost::inert::Inert;
use taskhost::observe::{Health, Metrics};

use super::{Cli, Command};

/// `first` (the error of parsing the command line) if it is about `taskhost worker`'s settings
/// from the environment: the command line parsed without them, and one sentence naming each
/// (its variable, its value, what it may be). `None`: a usage error like any other (a value
/// given as a flag, another command, not a value's error).
pub fn from_environment(first: &clap::Error) -> Option<(Cli, String)> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    // The error of the last parse, after the first.
    let mut next: Option<clap::Error> = None;
    let mut sentences = Vec::new();
    let cli = loop {
        let error = next.as_ref().unwrap_or(first);
        let (variable, sentence) = from_variable(&command, error, &args)?;
        sentences.push(sentence);
        command = without_env(command, &variable);
        match command
            .clone()
            .try_get_matches_from(&args)
            .and_then(|m| Cli::from_arg_matches(&m))
        {
            Ok(cli) => break cli,
            Err(e) => next = Some(e),
        }
    };
    matches!(cli.command, Command::Worker(_)).then(|| (cli, sentences.join("; ")))
}

/// Waits for the settings that do not parse (`sentence`) to be fixed by a redeploy, serving
/// the probes on `METRICS_ADDR` if it parsed: `Ok` on SIGTERM or SIGINT; `Err(the sentence)`
/// at once with `EXIT_ON_MISCONFIG`; `Err` if `METRICS_ADDR` cannot be bound (as the worker).
pub async fn wait(cli: Cli, sentence: String) -> anyhow::Result<ExitCode> {
    let Command::Worker(args) = cli.command else {
        unreachable!("from_environment gives only the worker's command line")
    };
    // First: as a container's PID 1 a SIGTERM without a handler would be ignored.
    let shutdown = super::shutdown_token();
    let health = Arc::new(Health::new());
    let server = tokio_util::sync::CancellationToken::new();
    let _server = server.clone().drop_guard();
    if let Some(addr) = args.metrics_addr {
        let metrics = Arc::new(Metrics::new());
        let bound = taskhost::observe::serve(addr, metrics, health.clone(), server.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on METRICS_ADDR={addr}: {e}"))?;
        tracing::info!(address = %bound, "serving /metrics, /livez, /readyz, /startupz");
    }
    // Not this node's doing: the startup probe passes, readiness says why.
    health.set_started();
    let exit = args.exit_on_misconfig;
    super::preflight::bad_setting(sentence, exit, Some(&health), &shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The variable `error` is about and the sentence saying what is wrong with its value, if
/// `error` is a value's that came from the environment (its flag is not in `args`).
fn from_variable(
    command: &clap::Command,
    error: &clap::Error,
    args: &[OsString],
) -> Option<(OsString, String)> {
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // An argument shows as in the error once built (its value name and count set).
    let mut built = command.clone();
    built.build();
    let arg = worker_args(&built).find(|a| a.get_env().is_some() && a.to_string() == *shown)?;
    let variable = arg.get_env()?.to_owned();
    if std::env::var_os(&variable).is_none() || on_command_line(arg, args) {
        return None;
    }
    let value = match error.get(ContextKind::InvalidValue) {
        _ if arg.is_hide_env_values_set() => "(hidden)".to_owned(),
        Some(ContextValue::String(v)) => Inert(v).to_string(),
        _ => String::new(),
    };
    let why = match (
        error.get(ContextKind::ValidValue),
        std::error::Error::source(error),
    ) {
        (Some(ContextValue::Strings(valid)), _) => format!("expected one of {}", valid.join(", ")),
        (_, Some(source)) => Inert(&source.to_string()).to_string(),
        _ => "does not parse".to_owned(),
    };
    let flag = arg
        .get_long()
        .map_or(String::new(), |l| format!(" (--{l})"));
    let name = variable.to_string_lossy();
    let sentence = format!("{name}={value}{flag} does not parse: {why}");
    Some((variable, sentence))
}

/// The arguments of `taskhost worker`: the global ones and its own.
fn worker_args(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    let worker = command.find_subcommand("worker").into_iter();
    command
        .get_arguments()
        .chain(worker.flat_map(|w| w.get_arguments()))
}

/// `command` with every argument read from `variable` no longer read from it.
fn without_env(command: clap::Command, variable: &OsString) -> clap::Command {
    command
        .mut_args(|a| {
            if a.get_env() == Some(variable.as_os_str()) {
                a.env(None::<&str>)
            } else {
                a
            }
        })
        .mut_subcommands(|s| without_env(s, variable))
}

/// Whether `arg`'s flag is in `args` (`--flag`, `--flag=value`, an alias; `-f`, `-fvalue`),
/// before any `--`.
fn on_command_line(arg: &Arg, args: &[OsString]) -> bool {
    let longs: Vec<&str> = arg
        .get_long()
        .into_iter()
        .chain(arg.get_all_aliases().unwrap_or_default())
        .collect();
    let short = arg.get_short();
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| {
            let long = a
                .strip_prefix("--")
                .map(|l| l.split('=').next().unwrap_or(l));
            match long {
                Some(l) => longs.contains(&l),
                None => short.is_some_and(|s| a.starts_with('-') && a[1..].starts_with(s)),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag is found in each of its forms, and only before `--`.
    #[test]
    fn a_flag_is_found_on_the_command_line_in_each_form() {
        let arg = Arg::new("slots").long("slots").alias("workers").short('s');
        let check = |args: &[&str], expected: bool| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            assert_eq!(on_command_line(&arg, &args), expected, "{args:?}");
        };
        check(&["taskhost", "worker", "--slots", "8"], true);
        check(&["taskhost", "worker", "--slots=8"], true);
        check(&["taskhost", "worker", "--workers=8"], true);
        check(&["taskhost", "worker", "-s8"], true);
        check(&["taskhost", "worker"], false);
        check(&["taskhost", "worker", "--slotsx=8"], false);
        check(&["taskhost", "worker", "--", "--slots"], false);
        check(&["--slots", "worker"], false);
    }
}
