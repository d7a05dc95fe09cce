//! Task modules as a registry (docs/design.md §4): immutable modules named by their hash,
//! a push record beside each (when, by which host, its world), and movable tags
//! `NAME:TAG` → hash. Jobs always name the hash: a tag is resolved once, where it is used
//! (`submit`, a worker's start), so a tag that moves never changes a job already submitted.
//!
//! - [`push`]: check, upload create-only, write the push record.
//! - [`read_tag`] / [`move_tag`] / [`set_tag`]: a tag moves by a conditional write on the
//!   version the mover saw (`If-Match` its ETag, or create-only): of two moves racing from
//!   one version exactly one wins, the other is [`RegistryError::TagMoved`].
//! - [`resolve`]: a [`ModuleRef`] to the hash it names now.
//! - [`list`]: every module with its record, size and tags.
//! - [`usage`](usage::usage): how many jobs in each state name each module.
//! - [`prune::plan`] / [`remove`]: which modules may go, and deleting one.
//!
//! **API boundary:** speaks only `ObjectStore`; keys come from `crate::keys`.

pub mod describe;
pub mod prune;
pub mod usage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use describe::Description;

use crate::ids::{ModuleHash, ModuleRef, ModuleTag};
use crate::keys;
use crate::runtime::Runtime;
use crate::store::{ETag, ObjectStore, Precondition, StoreError};

/// Why a registry operation failed.
#[derive(Debug)]
pub enum RegistryError {
    /// No tag of that name.
    NoSuchTag(ModuleTag),
    /// No module of that hash in the store.
    NoSuchModule(ModuleHash),
    /// The tag changed (or was created) since it was read: another push or tag won.
    TagMoved(ModuleTag),
    /// A stored record does not parse.
    BadRecord(String, String),
    /// The store failed.
    Storage(StoreError),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::NoSuchTag(t) => write!(f, "no module is tagged {t}"),
            RegistryError::NoSuchModule(h) => write!(f, "module {h} is not in the store"),
            RegistryError::TagMoved(t) => write!(
                f,
                "tag {t} was moved by someone else meanwhile; it was not changed (look at `module list`, then try again)"
            ),
            RegistryError::BadRecord(key, e) => write!(f, "{key} is not a valid record: {e}"),
            RegistryError::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Storage(e)
    }
}

/// Who did something and when: the host's name and its clock (ms since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The host's name, as the command line gives it (may be empty).
    pub host: String,
    /// When, by that host's clock (ms since the Unix epoch).
    pub at_ms: u64,
}

impl Stamp {
    /// `host` now, by this host's clock.
    pub fn now(host: &str) -> Stamp {
        Stamp {
            host: host.to_owned(),
            at_ms: crate::time::now_ms(),
        }
    }
}

/// `modules/<hex>.json`: written create-only beside the module by its first push (or by a
/// later push of a module stored before records existed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// The module's length in bytes.
    pub size: u64,
    /// Who pushed it first, and when.
    pub pushed: Stamp,
    /// Its world, imports, exports and SDK version (flattened into the record's JSON).
    #[serde(flatten)]
    pub description: Description,
}

/// `modules/tags/<name>/<tag>`: the module the tag names, and who moved it there when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The module's hash as text (`sha256:<hex>`); [`TagRecord::hash`] parses it.
    pub module: String,
    /// Who moved the tag here, and when.
    pub tagged: Stamp,
}

impl TagRecord {
    /// The module the tag names.
    pub fn hash(&self) -> Result<ModuleHash, String> {
        self.module.parse()
    }
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::BadRecord(key.to_owned(), e.to_string()))
}

/// What [`push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The module's hash: its name in the store.
    pub hash: ModuleHash,
    /// `false`: the module was already in the store.
    pub uploaded: bool,
}

/// Checks that `bytes` is a task module of our world (compiles and links it), uploads it
/// create-only and writes its push record (create-only: the first push's record stays).
/// Errors as [`crate::modules::push`].
pub async fn push<S: ObjectStore>(
    runtime: &Runtime,
    store: &S,
    bytes: Vec<u8>,
    by: Stamp,
) -> anyhow::Result<Pushed> {
    // Bytes that do not parse are refused by the push's own check, with its reason.
    let description = describe::describe(&bytes).unwrap_or_default();
    let size = bytes.len() as u64;
    let (hash, uploaded) = crate::modules::push(runtime, store, bytes).await?;
    let record = ModuleRecord {
        size,
        pushed: by,
        description,
    };
    let key = keys::module_record(&hash);
    let body = serde_json::to_vec(&record).expect("a record serializes");
    match store.put(&key, body, Precondition::Absent).await {
        Ok(_) | Err(StoreError::PreconditionFailed) => Ok(Pushed { hash, uploaded }),
        Err(e) => Err(anyhow::anyhow!("writing {key}: {e}")),
    }
}

/// The tag's record and the version it was read at; `None`: no such tag.
pub async fn read_tag<S: ObjectStore>(
    store: &S,
    tag: &ModuleTag,
) -> Result<Option<(TagRecord, ETag)>, RegistryError> {
    let key = keys::tag(tag);
    match store.get(&key).await? {
        None => Ok(None),
        Some(obj) => Ok(Some((parse(&key, &obj.bytes)?, obj.etag))),
    }
}

/// What [`move_tag`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagMove {
    /// The tag is new.
    Created,
    /// The tag named this other module before.
    Moved {
        /// The module it named (`sha256:<hex>`, as the old record said).
        from: String,
    },
}

/// Points `tag` at `hash`, if the tag is still what the caller saw: `seen` is the version
/// [`read_tag`] returned (`None`: the tag did not exist). A conditional write (`If-Match`
/// `seen`, or create-only), so of two moves from the same version exactly one wins; the
/// other gets [`RegistryError::TagMoved`] and changes nothing. Does not check that the
/// module exists (callers do: [`set_tag`]).
pub async fn move_tag<S: ObjectStore>(
    store: &S,
    tag: &ModuleTag,
    hash: &ModuleHash,
    by: Stamp,
    seen: Option<&(TagRecord, ETag)>,
) -> Result<TagMove, RegistryError> {
    let record = TagRecord {
        module: hash.to_string(),
        tagged: by,
    };
    let body = serde_json::to_vec(&record).expect("a record serializes");
    let (pre, what) = match seen {
        None => (Precondition::Absent, TagMove::Created),
        Some((old, etag)) => (
            Precondition::Matches(etag.clone()),
            TagMove::Moved {
                from: old.module.clone(),
            },
        ),
    };
    match store.put(&keys::tag(tag), body, pre).await {
        Ok(_) => Ok(what),
        Err(StoreError::PreconditionFailed) => Err(RegistryError::TagMoved(tag.clone())),
        Err(e) => Err(e.into()),
    }
}

/// Points `tag` at `hash` (which must be in the store), from the version read now: the
/// `module tag` command. See [`move_tag`].
pub async fn set_tag<S: ObjectStore>(
    store: &S,
    tag: &ModuleTag,
    hash: &ModuleHash,
    by: Stamp,
) -> Result<TagMove, RegistryError> {
    if !store.exists(&keys::module(hash)).await? {
        return Err(RegistryError::NoSuchModule(*hash));
    }
    let seen = read_tag(store, tag).await?;
    move_tag(store, tag, hash, by, seen.as_ref()).await
}

/// The hash `r` names now: a hash as it is (not checked against the store), a tag as its
/// record says.
pub async fn resolve<S: ObjectStore>(
    store: &S,
    r: &ModuleRef,
) -> Result<ModuleHash, RegistryError> {
    match r {
        ModuleRef::Hash(h) => Ok(*h),
        ModuleRef::Tag(t) => {
            let (record, _) = read_tag(store, t)
                .await?
                .ok_or_else(|| RegistryError::NoSuchTag(t.clone()))?;
            record
                .hash()
                .map_err(|e| RegistryError::BadRecord(keys::tag(t), e))
        }
    }
}

/// One module of [`list`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleEntry {
    /// The module's hash as text (`sha256:<hex>`).
    pub module: String,
    /// Bytes (from the record, else the object's size).
    pub size: u64,
    /// The tags naming it, in order.
    pub tags: Vec<String>,
    /// Its push record; `None` for a module pushed before records existed.
    pub record: Option<ModuleRecord>,
    /// The module's hash (not serialized: `module` shows it).
    #[serde(skip)]
    pub hash: ModuleHash,
}

/// Every module in the store (in hash order) with its size, push record and tags: one
/// listing of `modules/`, then one read per record and per tag (a size per module without
/// a record). Tags naming a module that is gone are left out.
pub async fn list<S: ObjectStore>(store: &S) -> Result<Vec<ModuleEntry>, RegistryError> {
    let keys_listed = store.list(keys::MODULES_PREFIX).await?;
    let mut tags: BTreeMap<ModuleHash, Vec<String>> = BTreeMap::new();
    for t in keys_listed.iter().filter_map(|k| keys::tag_of_key(k)) {
        if let Some((record, _)) = read_tag(store, &t).await?
            && let Ok(h) = record.hash()
        {
            tags.entry(h).or_default().push(t.to_string());
        }
    }
    let mut out = Vec::new();
    for hash in keys_listed.iter().filter_map(|k| keys::module_of_key(k)) {
        let rkey = keys::module_record(&hash);
        let record: Option<ModuleRecord> = match store.get(&rkey).await? {
            Some(obj) => Some(parse(&rkey, &obj.bytes)?),
            None => None,
        };
        let size = match &record {
            Some(r) => r.size,
            None => match store.size(&keys::module(&hash)).await? {
                Some(n) => n,
                None => continue, // deleted since the listing
            },
        };
        out.push(ModuleEntry {
            module: hash.to_string(),
            size,
            tags: tags.remove(&hash).unwrap_or_default(),
            record,
            hash,
        });
    }
    Ok(out)
}

/// What [`remove`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The tags that named it (deleted with it).
    pub tags: Vec<ModuleTag>,
    /// Whether the module's bytes were there.
    pub module: bool,
}

/// Deletes a module: the tags naming it first (so no new submit resolves to it), then its
/// bytes, then its record. The caller decides it is not needed ([`usage`](usage::usage),
/// [`prune::plan`]); a job that still names it finds it missing, which the worker handles
/// (it waits `MISSING_MODULE_RETRY_SECONDS`, then dead-letters the job).
pub async fn remove<S: ObjectStore>(
    store: &S,
    hash: &ModuleHash,
) -> Result<Removed, RegistryError> {
    let mut removed = Removed::default();
    for key in store.list(keys::TAGS_PREFIX).await? {
        let Some(t) = keys::tag_of_key(&key) else {
            continue;
        };
        if let Some((record, _)) = read_tag(store, &t).await?
            && record.hash().ok() == Some(*hash)
        {
            store.delete(&key).await?;
            removed.tags.push(t);
        }
    }
    removed.module = store.exists(&keys::module(hash)).await?;
    store.delete(&keys::module(hash)).await?;
    store.delete(&keys::module_record(hash)).await?;
    Ok(removed)
}
