//! `taskhost module push FILE.wasm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::config::{CacheArgs, StoreArgs};
use taskhost::runtime::Runtime;

/// Manage task modules in the bucket.
#[derive(Args, Debug)]
pub struct ModuleArgs {
    #[command(subcommand)]
    pub command: ModuleCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Check that FILE is a task module of the taskhost:task world, upload it create-only
    /// to modules/<sha256>.wasm, and print `sha256:<hex>` as the last line (the name jobs use).
    Push(PushArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The component (.wasm, built for wasm32-wasip2).
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub async fn main(args: ModuleArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ModuleCommand::Push(p) => push(p).await,
    }
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = args.store.open()?;
    let runtime = Runtime::new(args.cache.runtime_config())?;
    let (hash, uploaded) = match taskhost::modules::push(&runtime, &store, bytes).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e:#}", args.file.display());
            return Ok(ExitCode::from(super::exit::BAD_MODULE));
        }
    };
    if uploaded {
        eprintln!(
            "uploaded {} as {}",
            args.file.display(),
            taskhost::keys::module(&hash)
        );
    } else {
        eprintln!("{} is already in the bucket", taskhost::keys::module(&hash));
    }
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}
