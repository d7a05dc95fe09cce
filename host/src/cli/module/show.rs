//! `taskhost module list` and `taskhost module inspect REF`.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::super::config::StoreArgs;
use taskhost::ids::ModuleRef;
use taskhost::inert::{self, Inert};
use taskhost::registry::{self, Description, ModuleEntry};
use taskhost::store::ObjectStore;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON document per module, one per line, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The module: `sha256:<hex>` or a tag NAME[:TAG].
    pub module: ModuleRef,
    /// One JSON document, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub usage: super::UsageArgs,
}

/// One module as `list --json` prints it (and `inspect --json` extends it).
#[derive(Debug, Serialize)]
struct Row {
    module: String,
    tags: Vec<String>,
    size: u64,
    /// `taskhost:task@<version>`; null when unknown (no record, or no world import).
    world: Option<String>,
    /// ms since the Unix epoch; null for a module pushed before push records existed.
    pushed_ms: Option<u64>,
    pushed_by: Option<String>,
}

impl Row {
    fn of(e: &ModuleEntry) -> Row {
        Row {
            module: e.module.clone(),
            tags: e.tags.clone(),
            size: e.size,
            world: e.record.as_ref().and_then(|r| r.description.world.clone()),
            pushed_ms: e.record.as_ref().map(|r| r.pushed.at_ms),
            pushed_by: e.record.as_ref().map(|r| r.pushed.host.clone()),
        }
    }
}

/// What `inspect --json` prints.
#[derive(Debug, Serialize)]
struct Inspected {
    #[serde(flatten)]
    row: Row,
    imports: Vec<String>,
    exports: Vec<String>,
    sdk: Option<String>,
    jobs: taskhost::registry::usage::JobCounts,
}

/// A stored string (a host name, an import's name: whatever a push wrote) for the
/// terminal, escaped; `-` when absent.
fn or_dash(v: Option<&str>) -> String {
    Inert(v.filter(|s| !s.is_empty()).unwrap_or("-")).to_string()
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let entries = registry::list(&store).await?;
    if args.json {
        for e in &entries {
            println!("{}", inert::json(&serde_json::to_string(&Row::of(e))?));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<19} {:>10}  {:<20} {:<20} {:<16} TAGS",
        "MODULE", "SIZE", "WORLD", "PUSHED (UTC)", "BY"
    );
    for e in &entries {
        let r = Row::of(e);
        println!(
            "{:<19} {:>10}  {:<20} {:<20} {:<16} {}",
            short(&r.module),
            r.size,
            or_dash(r.world.as_deref()),
            r.pushed_ms.map_or("-".into(), taskhost::time::utc),
            or_dash(r.pushed_by.as_deref()),
            if r.tags.is_empty() {
                "-".into()
            } else {
                r.tags.join(",")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sha256:` and the first 12 hex digits (as `docker images` shows ids).
pub fn short(module: &str) -> &str {
    &module[..module.len().min(19)]
}

pub async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let hash = super::resolve_ref(&store, &args.module).await?;
    let entries = registry::list(&store).await?;
    let Some(entry) = entries.iter().find(|e| e.hash == hash) else {
        anyhow::bail!("module {hash} is not in the bucket");
    };
    // A module pushed before push records existed: read its bytes once.
    let description = match &entry.record {
        Some(r) => r.description.clone(),
        None => match store
            .get_at_most(
                &taskhost::keys::module(&hash),
                taskhost::modules::MAX_MODULE_BYTES,
            )
            .await?
        {
            Some(obj) => registry::describe::describe(&obj.bytes).unwrap_or_default(),
            None => Description::default(),
        },
    };
    let jobs = args
        .usage
        .usage(&store)
        .await?
        .get(&hash)
        .copied()
        .unwrap_or_default();
    let mut row = Row::of(entry);
    row.world = description.world.clone();
    let out = Inspected {
        row,
        imports: description.imports,
        exports: description.exports,
        sdk: description.sdk,
        jobs,
    };
    if args.json {
        println!("{}", inert::json(&serde_json::to_string(&out)?));
        return Ok(ExitCode::SUCCESS);
    }
    let r = &out.row;
    println!("module:    {}", r.module);
    println!(
        "tags:      {}",
        if r.tags.is_empty() {
            "-".into()
        } else {
            r.tags.join(", ")
        }
    );
    println!("size:      {} bytes", r.size);
    println!("world:     {}", or_dash(r.world.as_deref()));
    println!("sdk:       {}", or_dash(out.sdk.as_deref()));
    println!(
        "pushed:    {} by {}",
        r.pushed_ms.map_or("-".into(), taskhost::time::utc),
        or_dash(r.pushed_by.as_deref())
    );
    println!("imports:");
    for i in &out.imports {
        println!("  {}", Inert(i));
    }
    println!("exports:");
    for e in &out.exports {
        println!("  {}", Inert(e));
    }
    let j = &out.jobs;
    println!(
        "jobs:      {} queued, {} running, {} waiting, {} done, {} failed",
        j.queued, j.running, j.waiting, j.done, j.failed
    );
    Ok(ExitCode::SUCCESS)
}
