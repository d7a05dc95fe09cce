//! `taskhost module rm REF...` and `taskhost module prune`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;

use super::super::config::StoreArgs;
use super::super::exit;
use taskhost::ids::{ModuleHash, ModuleRef};
use taskhost::registry::{self, prune, usage};
use taskhost::store::any::AnyStore;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// The modules: `sha256:<hex>` or tags NAME[:TAG] (the module the tag names).
    #[arg(required = true)]
    pub modules: Vec<ModuleRef>,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Keep every module a tag names.
    #[arg(long)]
    pub keep_tagged: bool,
    /// Keep modules pushed less than this long ago (and those whose push time is unknown):
    /// a number and a unit s, m, h or d (`30d`).
    #[arg(long, value_name = "AGE", value_parser = prune::parse_age)]
    pub older_than: Option<std::time::Duration>,
    /// Only print what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let mut hashes: Vec<ModuleHash> = Vec::new();
    for r in &args.modules {
        let h = super::resolve_ref(&store, r).await?;
        if !hashes.contains(&h) {
            hashes.push(h);
        }
    }
    let jobs = usage::usage(&store).await?;
    let mut refused = false;
    hashes.retain(|h| match jobs.get(h).filter(|c| c.needed()) {
        Some(c) => {
            eprintln!(
                "error: module {h} is still needed ({} queued, {} running, {} waiting); not deleted",
                c.queued, c.running, c.waiting
            );
            refused = true;
            false
        }
        None => true,
    });
    if !hashes.is_empty() {
        if !confirm(args.yes, &hashes)? {
            return Ok(ExitCode::from(exit::DECLINED));
        }
        remove_all(&store, &hashes).await?;
    }
    Ok(if refused {
        ExitCode::from(exit::CONFLICT)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let entries = registry::list(&store).await?;
    let jobs = usage::usage(&store).await?;
    let rules = prune::Rules {
        keep_tagged: args.keep_tagged,
        older_than: args.older_than,
        now_ms: taskhost::time::now_ms(),
    };
    let planned = prune::plan(&entries, &jobs, &rules);
    let bytes: u64 = entries
        .iter()
        .filter(|e| planned.contains(&e.hash))
        .map(|e| e.size)
        .sum();
    eprintln!(
        "{} of {} modules to delete ({bytes} bytes)",
        planned.len(),
        entries.len()
    );
    if planned.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        for h in &planned {
            println!("would delete {h}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !confirm(args.yes, &planned)? {
        return Ok(ExitCode::from(exit::DECLINED));
    }
    remove_all(&store, &planned).await?;
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal (unless `yes`); refuses to delete without asking when stdin is
/// not a terminal.
fn confirm(yes: bool, hashes: &[ModuleHash]) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to delete {} module(s) without asking: pass --yes",
            hashes.len()
        );
    }
    for h in hashes {
        eprintln!("  {h}");
    }
    eprint!(
        "Delete these {} module(s) and their tags? [y/N] ",
        hashes.len()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    let ok = matches!(answer.trim(), "y" | "Y" | "yes");
    if !ok {
        eprintln!("nothing deleted");
    }
    Ok(ok)
}

async fn remove_all(store: &AnyStore, hashes: &[ModuleHash]) -> anyhow::Result<()> {
    for h in hashes {
        let removed = registry::remove(store, h).await?;
        let tags: Vec<String> = removed.tags.iter().map(ToString::to_string).collect();
        if tags.is_empty() {
            println!("deleted {h}");
        } else {
            println!("deleted {h} (and its tags {})", tags.join(", "));
        }
    }
    Ok(())
}
