//! Notes: an attribute of the object's file where the filesystem keeps user attributes, the
//! hidden file where it refuses them (forced here) or the note is too big, and never a stale
//! note whichever way the versions before and after were written.

use super::*;

const KEY: &str = "jobs/a/result";
const HIDDEN: &str = "jobs/a/.result.note";

/// Whether the filesystem under `dir` keeps user extended attributes (ext4 and tmpfs do).
fn keeps_xattrs(dir: &Path) -> bool {
    let probe = File::create(dir.join("probe")).unwrap();
    let kept = note::Xattrs::default().set(&probe, "n").unwrap();
    fs::remove_file(dir.join("probe")).unwrap();
    kept
}

async fn write(s: &DirStore, note: Option<&str>) {
    s.put_with_note(KEY, b"r".to_vec(), Precondition::None, note.map(Into::into))
        .await
        .unwrap();
}

async fn note_of(s: &DirStore) -> Option<String> {
    s.get(KEY).await.unwrap().unwrap().note
}

#[tokio::test]
async fn a_note_costs_no_file_where_the_filesystem_keeps_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    write(&s, Some("n1")).await;
    assert_eq!(note_of(&s).await.as_deref(), Some("n1"));
    let want: &[&str] = if keeps_xattrs(tmp.path()) {
        &["jobs", "jobs/a", KEY]
    } else {
        &["jobs", "jobs/a", HIDDEN, KEY]
    };
    assert_eq!(files(tmp.path()), want);
    // An overwrite without a note drops it; one with a note replaces it.
    write(&s, None).await;
    assert_eq!(note_of(&s).await, None);
    write(&s, Some("n2")).await;
    assert_eq!(note_of(&s).await.as_deref(), Some("n2"));
}

/// Where the filesystem refuses attributes the note is the hidden file, written and
/// removed with its object.
#[tokio::test]
async fn where_attributes_are_refused_the_note_is_a_hidden_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap().without_xattrs();
    write(&s, Some("n1")).await;
    assert_eq!(note_of(&s).await.as_deref(), Some("n1"));
    assert_eq!(fs::read_to_string(tmp.path().join(HIDDEN)).unwrap(), "n1");
    assert_eq!(files(tmp.path()), ["jobs", "jobs/a", HIDDEN, KEY]);
    write(&s, None).await;
    assert_eq!(note_of(&s).await, None);
    assert_eq!(files(tmp.path()), ["jobs", "jobs/a", KEY]);
    write(&s, Some("n2")).await;
    s.delete(KEY).await.unwrap();
    assert_eq!(
        files(tmp.path()),
        Vec::<String>::new(),
        "gone with its object"
    );
}

/// Objects written one way and overwritten the other (a store's files from before notes were
/// attributes, a filesystem that changed): every read gets the note of the write it reads.
#[tokio::test]
async fn no_stale_note_whichever_way_each_version_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let attrs = DirStore::open(tmp.path()).unwrap();
    let hidden = DirStore::open(tmp.path()).unwrap().without_xattrs();
    // (writer, note, then what both stores read)
    let steps: &[(&DirStore, Option<&str>)] = &[
        (&hidden, Some("h1")),
        (&attrs, Some("a1")),
        (&hidden, Some("h2")),
        (&attrs, None),
        (&hidden, Some("h3")),
        (&hidden, None),
        (&attrs, Some("a2")),
        (&hidden, None),
        (&attrs, Some("a3")),
        (&attrs, None),
    ];
    for (i, (writer, note)) in steps.iter().enumerate() {
        write(writer, *note).await;
        for reader in [&attrs, &hidden] {
            assert_eq!(note_of(reader).await.as_deref(), *note, "step {i}");
        }
    }
    assert_eq!(files(tmp.path()), ["jobs", "jobs/a", KEY]);
}

/// A note too big for an attribute (over the 64 KiB every Linux filesystem refuses) goes to
/// the hidden file; the store keeps trying attributes for the next ones.
#[tokio::test]
async fn a_note_too_big_for_an_attribute_is_kept_in_the_hidden_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let big = "x".repeat(70_000);
    write(&s, Some(&big)).await;
    assert_eq!(note_of(&s).await.as_deref(), Some(big.as_str()));
    assert!(tmp.path().join(HIDDEN).exists());
    write(&s, Some("small")).await;
    assert_eq!(note_of(&s).await.as_deref(), Some("small"));
    assert_eq!(
        tmp.path().join(HIDDEN).exists(),
        !keeps_xattrs(tmp.path()),
        "the small note is an attribute where the filesystem keeps them"
    );
}

/// A completed upload replaces the object with bytes that have no note: an older note goes.
#[tokio::test]
async fn a_completed_upload_leaves_no_older_note() {
    let tmp = tempfile::tempdir().unwrap();
    for s in [
        DirStore::open(tmp.path()).unwrap(),
        DirStore::open(tmp.path()).unwrap().without_xattrs(),
    ] {
        write(&s, Some("old")).await;
        let up = s.upload_start(KEY).await.unwrap();
        let part = s.upload_part(KEY, &up, 1, b"new".to_vec()).await.unwrap();
        s.upload_complete(KEY, &up, &[part]).await.unwrap();
        let got = s.get(KEY).await.unwrap().unwrap();
        assert_eq!((got.bytes, got.note), (b"new".to_vec(), None));
        assert_eq!(files(tmp.path()), ["jobs", "jobs/a", KEY]);
    }
}
