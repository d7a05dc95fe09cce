//! `taskhost module push|tag|list|inspect|rm|prune`: the registry's command line (the
//! library's `taskhost::registry` does the work; this parses and prints).

mod clean;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::config::{CacheArgs, StoreArgs};
use super::exit;
use taskhost::ids::{ModuleHash, ModuleRef, ModuleTag};
use taskhost::registry::{self, RegistryError, Stamp, TagMove};
use taskhost::runtime::Runtime;
use taskhost::store::ObjectStore;
use taskhost::store::any::AnyStore;

/// Manage task modules in the bucket: push, tag, list, inspect, remove, prune.
///
/// A module is named by the sha256 of its bytes (immutable; jobs always carry it). A tag
/// `NAME[:TAG]` (`NAME` alone is `NAME:latest`) is a movable name for one: `submit` and a
/// worker's `DEFAULT_MODULE` resolve it once, to the hash.
#[derive(Args, Debug)]
pub struct ModuleArgs {
    #[command(subcommand)]
    pub command: ModuleCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Check that FILE is a task module of the taskhost:task world, upload it create-only
    /// to modules/<sha256>.wasm with its push record, optionally tag it, and print
    /// `sha256:<hex>` as the last line (the name jobs use).
    ///
    /// Each tag moves only if nobody moved it since this push began (exit 5 otherwise; the
    /// module is uploaded all the same).
    Push(PushArgs),
    /// Point the tag NAME[:TAG] at a module (a hash, or another tag's module). Exit 5 when
    /// someone else moved the tag at the same moment (it is theirs; nothing changed).
    Tag(TagArgs),
    /// Every module: hash, tags, size, world version, when and by which host it was pushed.
    List(show::ListArgs),
    /// One module: what `list` shows, its imports and exports, the SDK version if known,
    /// and how many jobs in each state name it.
    Inspect(show::InspectArgs),
    /// Delete modules (and the tags naming them). A module a queued, running or waiting
    /// job names is never deleted (exit 5). Asks first; `--yes` for scripts.
    Rm(clean::RmArgs),
    /// Delete the modules no queued, running or waiting job names, keeping tagged ones
    /// (`--keep-tagged`) and recent ones (`--older-than`). Asks first; `--yes` for scripts.
    Prune(clean::PruneArgs),
}

/// Who records a push or a tag.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// The host name recorded with a push or a tag; default: the contents of /etc/hostname.
    #[arg(long = "host-name", env = "HOSTNAME", value_name = "NAME")]
    pub host_name: Option<String>,
}

impl HostArgs {
    fn stamp(&self) -> Stamp {
        Stamp::now(&super::config::host_name(self.host_name.as_deref()))
    }
}

/// How `inspect`, `rm` and `prune` count the jobs naming each module.
#[derive(Args, Debug, Clone, Copy)]
pub struct UsageArgs {
    /// In the counts, a checkpoint written within this many seconds is a running job's (its
    /// owner rewrites it every half ACK_DEADLINE_SECONDS), as `status` counts it.
    #[arg(long, env = "ACK_DEADLINE_SECONDS", default_value_t = taskhost::queue::DEFAULT_ACK_DEADLINE_SECS)]
    pub ack_deadline_seconds: u32,
}

impl UsageArgs {
    /// The jobs naming each module, by state (the one place the CLI counts them).
    async fn usage(
        &self,
        store: &AnyStore,
    ) -> Result<std::collections::BTreeMap<ModuleHash, registry::usage::JobCounts>, RegistryError>
    {
        let window = taskhost::status::running_window(self.ack_deadline_seconds);
        registry::usage::usage(store, window).await
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The component (.wasm, built for wasm32-wasip2).
    pub file: PathBuf,
    /// Tag the module NAME[:TAG] (repeatable).
    #[arg(long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<ModuleTag>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// The module: `sha256:<hex>` or a tag NAME[:TAG].
    pub module: ModuleRef,
    /// The tag to point at it.
    pub tag: ModuleTag,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

pub async fn main(args: ModuleArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ModuleCommand::Push(a) => push(a).await,
        ModuleCommand::Tag(a) => tag(a).await,
        ModuleCommand::List(a) => show::list(a).await,
        ModuleCommand::Inspect(a) => show::inspect(a).await,
        ModuleCommand::Rm(a) => clean::rm(a).await,
        ModuleCommand::Prune(a) => clean::prune(a).await,
    }
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = args.store.open()?;
    let runtime = Runtime::new(args.cache.runtime_config())?;
    // What each tag was before this push: it moves only if nobody moved it meanwhile.
    let mut seen = Vec::new();
    for t in &args.tags {
        seen.push(registry::read_tag(&store, t).await?);
    }
    let stamp = args.host.stamp();
    let pushed = match registry::push(&runtime, &store, bytes, stamp.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e:#}", args.file.display());
            return Ok(ExitCode::from(exit::BAD_MODULE));
        }
    };
    let key = taskhost::keys::module(&pushed.hash);
    if pushed.uploaded {
        eprintln!("uploaded {} as {key}", args.file.display());
    } else {
        eprintln!("{key} is already in the bucket");
    }
    let mut code = ExitCode::SUCCESS;
    for (t, seen) in args.tags.iter().zip(&seen) {
        let moved = registry::move_tag(&store, t, &pushed.hash, stamp.clone(), seen.as_ref()).await;
        if !report_tag(t, &pushed.hash, moved)? {
            code = ExitCode::from(exit::CONFLICT);
        }
    }
    println!("{}", pushed.hash);
    Ok(code)
}

async fn tag(args: TagArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let hash = resolve_ref(&store, &args.module).await?;
    let moved = registry::set_tag(&store, &args.tag, &hash, args.host.stamp()).await;
    Ok(if report_tag(&args.tag, &hash, moved)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::CONFLICT)
    })
}

/// Prints what a tag move did; `Ok(false)`: someone else moved the tag (said on stderr).
fn report_tag(
    tag: &ModuleTag,
    hash: &ModuleHash,
    moved: Result<TagMove, RegistryError>,
) -> anyhow::Result<bool> {
    match moved {
        Ok(TagMove::Created) => eprintln!("tagged {tag} -> {hash}"),
        Ok(TagMove::Moved { from }) if from == hash.to_string() => {
            eprintln!("{tag} already names {hash}")
        }
        Ok(TagMove::Moved { from }) => eprintln!("moved {tag} -> {hash} (was {from})"),
        Err(e @ RegistryError::TagMoved(_)) => {
            eprintln!("error: {e}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(true)
}

/// The hash `r` names now, which must be in the store; a tag's resolution is printed on
/// stderr (`NAME:TAG is sha256:...`). For `submit`, `tag`, `inspect`, `rm`.
pub async fn resolve_ref(store: &AnyStore, r: &ModuleRef) -> anyhow::Result<ModuleHash> {
    let hash = registry::resolve(store, r).await?;
    if !store.exists(&taskhost::keys::module(&hash)).await? {
        anyhow::bail!(
            "module {hash}{} is not in the bucket: push it first with `taskhost module push FILE.wasm`",
            match r {
                ModuleRef::Tag(t) => format!(" (tagged {t})"),
                ModuleRef::Hash(_) => String::new(),
            }
        );
    }
    if let ModuleRef::Tag(t) = r {
        eprintln!("{t} is {hash}");
    }
    Ok(hash)
}
