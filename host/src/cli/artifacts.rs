//! `taskhost artifacts JOB_ID [--get NAME ... | --all] [-o DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::config::StoreArgs;
use taskhost::files::{Manifest, transfer};
use taskhost::ids::JobId;
use taskhost::store::ObjectStore;

/// List a finished job's artifacts (name and size), or download them.
///
/// Artifacts become visible when the job's result is written: a job that is not done has
/// none yet (whatever its running task has uploaded so far). Downloads are written to a
/// temporary file renamed into place, with a progress bar for large files, and checked
/// against the recorded size.
#[derive(Args, Debug)]
pub struct ArtifactsArgs {
    /// The job.
    pub job: JobId,
    /// Download this artifact into DIR (repeatable).
    #[arg(long = "get", value_name = "NAME", conflicts_with = "all")]
    pub get: Vec<String>,
    /// Download every artifact into DIR.
    #[arg(long)]
    pub all: bool,
    /// Where downloads go.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Whether the job's stored outputs are its work's (an unreadable checkpoint: taken as so).
async fn current_outputs(store: &impl ObjectStore, job: &JobId) -> bool {
    let header = taskhost::checkpoint::peek(store, job).await.ok().flatten();
    header.is_none_or(|h| h.outputs_current())
}

pub async fn main(args: ArtifactsArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let done = store.exists(&taskhost::keys::result(&args.job)).await?
        && current_outputs(&store, &args.job).await;
    if !done {
        eprintln!(
            "error: job {} is not done: its artifacts become visible with its result",
            args.job
        );
        return Ok(ExitCode::from(super::exit::NOT_FOUND));
    }
    let manifest = Manifest::read(&store, &args.job).await?;
    if args.get.is_empty() && !args.all {
        for a in &manifest.artifacts {
            println!("{:>14}  {}", a.size, a.name);
        }
        eprintln!(
            "{} artifacts, {} bytes",
            manifest.artifacts.len(),
            manifest.total_bytes()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let wanted: Vec<_> = if args.all {
        manifest.artifacts.iter().collect()
    } else {
        let mut wanted = Vec::new();
        for name in &args.get {
            match manifest.artifacts.iter().find(|a| &a.name == name) {
                Some(a) => wanted.push(a),
                None => {
                    let names: Vec<_> = manifest.artifacts.iter().map(|a| &a.name).collect();
                    eprintln!(
                        "error: job {} has no artifact `{name}` (it has: {names:?})",
                        args.job
                    );
                    return Ok(ExitCode::from(super::exit::NOT_FOUND));
                }
            }
        }
        wanted
    };
    for a in wanted {
        let path = args.output.join(&a.name);
        let bar = if args.quiet || a.size < (8 << 20) {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(a.size).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template"),
            )
        };
        bar.set_message(a.name.clone());
        let key = taskhost::keys::artifact(&args.job, &a.name);
        let stored = store.size(&key).await?;
        anyhow::ensure!(
            stored == Some(a.size),
            "artifact `{}` of job {} is {} in the store but its manifest says {} bytes",
            a.name,
            args.job,
            stored.map_or("missing".to_owned(), |n| format!("{n} bytes")),
            a.size
        );
        transfer::download(&store, &key, a.size, &path, |n| bar.set_position(n)).await?;
        bar.finish_and_clear();
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
