//! The sweep of dead writers' temporary files.

use std::time::SystemTime;

use super::*;
use crate::store::dir::{STALE_TEMPORARY_AGE, Swept};

/// A temporary file as a writer names it, beside `key`, with `bytes`, last modified `age` ago.
fn leftover(root: &Path, key: &str, bytes: &[u8], age: Duration) -> std::path::PathBuf {
    let path = root.join(key);
    let name = path.file_name().unwrap().to_str().unwrap();
    let tmp = path.with_file_name(format!(".{name}.tmp.4242.7.0123456789abcdef"));
    fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    fs::write(&tmp, bytes).unwrap();
    let when = SystemTime::now() - age;
    File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(when)
        .unwrap();
    tmp
}

const OLD: Duration = Duration::from_secs(2 * 3600);

/// Only temporary files older than the age go: the objects, their notes, a live writer's
/// temporary file and an upload's parts stay.
#[tokio::test]
async fn only_old_temporary_files_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = DirStore::open(root).unwrap().without_xattrs();
    s.put_with_note(
        "jobs/a/result",
        b"done".to_vec(),
        Precondition::None,
        Some("n".into()),
    )
    .await
    .unwrap();
    let dead = leftover(root, "jobs/a/checkpoint", b"dead writer", OLD);
    let live = leftover(root, "jobs/a/result", b"live writer", Duration::ZERO);
    let upload = s.upload_start("jobs/a/artifacts/x").await.unwrap();
    let part = root
        .join(".uploads")
        .join(&upload)
        .join(".1.tmp.1.2.0123456789abcdef");
    fs::write(&part, b"part").unwrap();
    File::options()
        .write(true)
        .open(&part)
        .unwrap()
        .set_modified(SystemTime::now() - OLD)
        .unwrap();

    let swept = s.sweep_temporaries(STALE_TEMPORARY_AGE).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            files: 1,
            bytes: 11
        }
    );
    assert!(!dead.exists());
    assert!(live.exists(), "a temporary file younger than the age stays");
    assert!(part.exists(), "uploads have their own rule");
    let obj = s.get("jobs/a/result").await.unwrap().unwrap();
    assert_eq!(
        (obj.bytes.as_slice(), obj.note.as_deref()),
        (&b"done"[..], Some("n"))
    );
    assert_eq!(
        s.sweep_temporaries(STALE_TEMPORARY_AGE).await.unwrap(),
        Swept::default(),
        "nothing left to sweep"
    );
}

/// A dead writer's temporary file alone in the directories made for it goes with them, and
/// the key can then be written as usual.
#[tokio::test]
async fn a_leftover_alone_goes_with_its_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = DirStore::open(root).unwrap();
    leftover(root, "jobs/dead/checkpoint", b"x", OLD);
    let swept = s.sweep_temporaries(STALE_TEMPORARY_AGE).await.unwrap();
    assert_eq!(swept.files, 1);
    assert_eq!(files(root), Vec::<String>::new(), "nothing left behind");
    s.put("jobs/dead/checkpoint", b"y".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(files(root), ["jobs", "jobs/dead", "jobs/dead/checkpoint"]);
}
