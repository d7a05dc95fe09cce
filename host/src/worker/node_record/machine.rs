//! Which machine wrote a record, and whether a directory's filesystem keeps its locks on
//! this machine: a free lock proves a process dead only there.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LOCK;

/// The machine a record was written on: its host name and the kernel's boot id. A lock
/// tells whether a process lives only to processes of the same kernel; host names repeat
/// across machines (container defaults such as `localhost`, one pod name on two nodes), the
/// boot id does not. A record from before a reboot is not taken either: its leases have
/// lapsed by then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The host name (`/proc/sys/kernel/hostname`).
    pub name: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): new at every boot.
    pub boot_id: String,
}

impl Host {
    /// This machine, as the kernel names it.
    pub fn this() -> io::Result<Host> {
        let read = |path: &str| -> io::Result<String> {
            let text = fs::read_to_string(path)?;
            let text = text.trim();
            if text.is_empty() {
                return Err(io::Error::other(format!("{path} is empty")));
            }
            Ok(text.to_owned())
        };
        Ok(Host {
            name: read("/proc/sys/kernel/hostname")?,
            boot_id: read("/proc/sys/kernel/random/boot_id")?,
        })
    }

    /// The host recorded in a record's lock file; `None` if it names none (a record of an
    /// older version, or one cut short as it was created).
    pub(crate) fn of_record(dir: &Path) -> Option<Host> {
        serde_json::from_slice(&fs::read(dir.join(LOCK)).ok()?).ok()
    }
}

/// Filesystems where this kernel keeps the locks of every process that can reach the files:
/// local disks and memory. An allow-list, because a wrong "local" is what costs: on a shared
/// filesystem a lock held on another machine may look free here (NFS mounted `nolock`, SMB
/// and FUSE servers that keep locks per client or not at all), and a live worker's jobs
/// would be taken from it; a wrong "shared" only costs the shortcut.
const LOCAL_FILESYSTEMS: &[(u32, &str)] = &[
    (0xef53, "ext2/ext3/ext4"),
    (0x5846_5342, "XFS"),
    (0x9123_683e, "Btrfs"),
    (0x2fc1_2fc1, "ZFS"),
    (0xf2f5_2010, "F2FS"),
    (0xca45_1a4e, "bcachefs"),
    (0x5265_4973, "ReiserFS"),
    (0x3153_464a, "JFS"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58f6, "ramfs"),
    // A container's root: its upper layer is on the node's own disk.
    (0x794c_7630, "overlayfs"),
];

/// Shared filesystems, named for the log line only: anything not in [`LOCAL_FILESYSTEMS`]
/// is refused.
const SHARED_FILESYSTEMS: &[(u32, &str)] = &[
    (0x6969, "NFS"),
    (0xff53_4d42, "CIFS"),
    (0xfe53_4d42, "SMB2"),
    (0x517b, "SMB"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9p"),
    (0x00c3_6400, "CephFS"),
    (0x5346_414f, "AFS"),
    (0x6b41_4653, "kAFS"),
    (0x0116_1970, "GFS2"),
    (0x7461_636f, "OCFS2"),
    (0x0bd0_0bd0, "Lustre"),
    (0x7375_7245, "Coda"),
];

/// Whether a filesystem of type `magic` (statfs's `f_type`) keeps its locks in this kernel:
/// `Ok(name)` if so, else `Err` saying what it is.
pub(crate) fn local_filesystem(magic: u32) -> Result<&'static str, String> {
    let named = |list: &[(u32, &'static str)]| {
        list.iter()
            .find(|(m, _)| *m == magic)
            .map(|(_, name)| *name)
    };
    match (named(LOCAL_FILESYSTEMS), named(SHARED_FILESYSTEMS)) {
        (Some(name), _) => Ok(name),
        (None, Some(name)) => Err(format!("a shared filesystem ({name})")),
        (None, None) => Err(format!(
            "a filesystem of unknown type {magic:#x}, maybe a shared one"
        )),
    }
}

/// Checks that records under `dir` can be trusted: it is on a local filesystem
/// (`LOCAL_FILESYSTEMS`). The error says why not, in a sentence.
pub fn check_filesystem(dir: &Path) -> io::Result<()> {
    let magic = filesystem_magic(dir)?;
    local_filesystem(magic).map(drop).map_err(|what| {
        io::Error::other(format!(
            "{} is on {what}, where a dead worker cannot be told from one on another machine",
            dir.display()
        ))
    })
}

// statfs(2) has no safe form in std.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn filesystem_magic(dir: &Path) -> io::Result<u32> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is a `statfs` for the call to fill in.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled `st` in.
    let st = unsafe { st.assume_init() };
    // Magic numbers are 32 bits; `f_type`'s width differs between targets.
    Ok(st.f_type as u32)
}

#[cfg(not(target_os = "linux"))]
fn filesystem_magic(_dir: &Path) -> io::Result<u32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the filesystem type is known on Linux only",
    ))
}
