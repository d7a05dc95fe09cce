//! An object's note ([`ObjectStore::put_with_note`](crate::store::ObjectStore::put_with_note)):
//! the extended attribute `user.taskhost.note` of the object's file, set on its temporary file
//! before the rename, so the note comes and goes with the bytes it belongs to and costs no
//! file, inode or fsync of its own. Where the filesystem refuses user extended attributes (or
//! the note does not fit in one) it is the hidden file `.<name>.note` beside the object,
//! renamed into place just before the object, as every note was before attributes were used.
//!
//! A reader takes the attribute of the file it read the bytes from, else the hidden file
//! (notes written before, or where attributes are refused). Every write that does not leave
//! its note in the hidden file removes that file, so no object is read with an older note.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::hidden_sibling;

/// Whether a store sets notes as extended attributes: until its filesystem first refuses one.
#[derive(Debug)]
pub(super) struct Xattrs(AtomicBool);

impl Default for Xattrs {
    fn default() -> Self {
        Xattrs(AtomicBool::new(true))
    }
}

impl Xattrs {
    /// Never tries attributes: every note goes to its hidden file (as on a filesystem that
    /// refuses them).
    #[cfg(test)]
    pub(super) fn refused() -> Self {
        Xattrs(AtomicBool::new(false))
    }

    /// Sets `note` as `file`'s attribute: `Ok(false)` if the filesystem refuses user
    /// attributes (remembered: later notes go to the hidden file at once) or one this big,
    /// so the caller keeps the note in the hidden file instead.
    pub(super) fn set(&self, file: &File, note: &str) -> io::Result<bool> {
        if !self.0.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match sys::set(file, note.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if sys::is_unsupported(&e) => {
                self.0.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) if sys::is_too_big(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The hidden file beside the object at `path` that holds its note where attributes do not.
pub(super) fn hidden_path(path: &Path) -> PathBuf {
    hidden_sibling(path, "note")
}

/// The note of the object whose file (at `path`) is open as `file`: its attribute, else the
/// hidden file's text (a reader racing a write there may pair the new bytes with the old
/// note, which only a display reads).
pub(super) fn read(file: &File, path: &Path) -> io::Result<Option<String>> {
    if let Some(bytes) = sys::get(file)? {
        return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
    }
    match fs::read_to_string(hidden_path(path)) {
        Ok(note) => Ok(Some(note)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the hidden note beside the object at `path`, if there is one.
pub(super) fn remove_hidden(path: &Path) -> io::Result<()> {
    match fs::remove_file(hidden_path(path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(target_os = "linux")]
mod sys {
    //! `fsetxattr(2)` and `fgetxattr(2)`, which std does not wrap.

    use std::ffi::CStr;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    const NAME: &CStr = c"user.taskhost.note";

    pub(super) fn is_unsupported(e: &io::Error) -> bool {
        e.raw_os_error()
            .is_some_and(|c| c == libc::ENOTSUP || c == libc::EOPNOTSUPP)
    }

    /// Too big for the filesystem's attributes (ext4 keeps them in one block).
    pub(super) fn is_too_big(e: &io::Error) -> bool {
        e.raw_os_error()
            .is_some_and(|c| c == libc::E2BIG || c == libc::ENOSPC || c == libc::ERANGE)
    }

    #[allow(unsafe_code)]
    pub(super) fn set(file: &File, value: &[u8]) -> io::Result<()> {
        // SAFETY: `NAME` is NUL-terminated; `value` is valid for reads of `value.len()` bytes;
        // the descriptor is `file`'s, open for the whole call.
        let rc = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                NAME.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The attribute's value; `None` if the file has none (or its filesystem keeps none).
    #[allow(unsafe_code)]
    pub(super) fn get(file: &File) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 1024];
        // The value could be bigger than the buffer: its size is asked for, then read (the
        // attribute is set before the file has its name and never changes; a few tries bound
        // it anyway).
        for _ in 0..4 {
            // SAFETY: `NAME` is NUL-terminated; `buf` is valid for writes of `buf.len()` bytes;
            // the descriptor is `file`'s, open for the whole call.
            let n = unsafe {
                libc::fgetxattr(
                    file.as_raw_fd(),
                    NAME.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if let Ok(n) = usize::try_from(n) {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODATA) => return Ok(None),
                Some(libc::ERANGE) => {
                    // SAFETY: a size 0 call only returns the value's size and writes nothing.
                    let size = unsafe {
                        libc::fgetxattr(file.as_raw_fd(), NAME.as_ptr(), std::ptr::null_mut(), 0)
                    };
                    let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
                    buf.resize(size, 0);
                }
                _ if is_unsupported(&e) => return Ok(None),
                _ => return Err(e),
            }
        }
        Err(io::Error::other("the note attribute kept changing size"))
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! Elsewhere notes are kept in their hidden files.

    use std::fs::File;
    use std::io;

    pub(super) fn is_unsupported(_: &io::Error) -> bool {
        true
    }

    pub(super) fn is_too_big(_: &io::Error) -> bool {
        false
    }

    pub(super) fn set(_: &File, _: &[u8]) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(super) fn get(_: &File) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}
