//! The object-store contract, run once per backend: the directory store and the S3 server
//! (moto behind tests/s3/serve.py). Every case is one async fn over a [`Setup`]; `contract!`
//! makes a test of it for each backend. What only one backend has (S3 credentials, buckets,
//! key prefixes, the `Date` clock) stays in `store_s3`.
//!
//! Keys are built by `taskhost::keys`, as the host builds them.
//!
//! `mod.rs`: the backends, the helpers and the list of cases; the cases by what they
//! exercise: `objects.rs` (one object: reads, conditional writes, notes, ranges),
//! `races.rs` (racing writers), `listing.rs`, `multipart.rs`.

use crate::support;

use std::sync::Arc;

pub(crate) use support::bytes::data;
use support::s3::S3Server;
use taskhost::ids::{JobId, ModuleHash};
use taskhost::keys;
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{
    ETag, ErrorKind, MIN_PART_BYTES, Multipart, ObjectStore, Precondition, StoreError,
};

/// The backend under test, kept alive for the test's length.
enum Backend {
    Dir(tempfile::TempDir),
    S3(S3Server),
}

struct Setup {
    backend: Backend,
    /// The first client, for the cases that need only one.
    store: AnyStore,
}

impl Setup {
    async fn new(s3: bool) -> Setup {
        let backend = if s3 {
            Backend::S3(S3Server::start().await)
        } else {
            Backend::Dir(tempfile::tempdir().unwrap())
        };
        let store = client(&backend);
        Setup { backend, store }
    }

    /// Another client of the same objects, with its own handle (and, on S3, its own
    /// connection pool), as another worker would have.
    fn client(&self) -> AnyStore {
        client(&self.backend)
    }
}

fn client(backend: &Backend) -> AnyStore {
    match backend {
        Backend::Dir(dir) => AnyStore::Dir(DirStore::open(dir.path()).unwrap()),
        Backend::S3(s3) => AnyStore::S3(s3.store("")),
    }
}

fn job(id: &str) -> JobId {
    id.parse().unwrap()
}

fn assert_precondition_failed<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::PreconditionFailed) => {
            assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{what}");
            assert!(!e.is_transient(), "{what}");
        }
        other => panic!("{what}: expected PreconditionFailed, got {other:?}"),
    }
}

mod listing;
mod multipart;
mod objects;
mod races;

use listing::*;
use multipart::*;
use objects::*;
use races::*;

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod dir {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() { super::$case(false).await })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() { super::$case(true).await })*
        }
    };
}

contract!(
    a_missing_object_is_absent_to_every_read,
    written_bytes_read_back_with_the_tag_the_write_returned,
    create_only_succeeds_once,
    if_match_needs_the_current_tag,
    an_identical_rewrite_keeps_the_tag,
    of_racing_create_only_writers_exactly_one_wins,
    of_racing_if_match_writers_exactly_one_wins,
    listing_is_by_prefix_in_lexical_order,
    listing_pages_through_more_than_1000_keys,
    ranged_reads_stop_at_the_end,
    a_whole_read_refuses_an_object_larger_than_asked,
    a_multipart_upload_is_invisible_until_complete_and_can_be_resumed,
    an_aborted_upload_leaves_the_object_as_it_was,
    a_note_goes_with_the_version_it_was_written_with,
);
