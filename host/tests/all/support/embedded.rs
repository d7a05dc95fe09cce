//! The embedded queue with either store, for the areas that run the binary once per store
//! kind: the CLI's environment and a client of the same store.

use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;

use super::cli::CliEnv;
use super::s3::S3Server;

/// A [`CliEnv`] on the embedded queue and a store of one kind, with a client of that store.
pub struct Embedded {
    /// The binary's environment.
    pub cli: CliEnv,
    /// The same store, for the test's own reads and writes.
    pub store: AnyStore,
    /// The S3 server of an `s3` run, kept alive with it.
    pub _s3: Option<S3Server>,
}

impl Embedded {
    /// `cli` (made with [`CliEnv::embedded`]) on its directory store (`kind` "dir") or on an
    /// S3 server of its own (any other kind).
    pub async fn start(kind: &str, cli: CliEnv) -> Embedded {
        match kind {
            "dir" => Embedded {
                store: AnyStore::Dir(DirStore::open(cli.var("STORE_DIR")).unwrap()),
                cli,
                _s3: None,
            },
            _ => {
                let s3 = S3Server::start().await;
                Embedded {
                    cli: cli.on_s3(&s3),
                    store: AnyStore::S3(s3.store("")),
                    _s3: Some(s3),
                }
            }
        }
    }
}
