//! Writers racing on one precondition: exactly one wins.

use super::*;

/// Writers that race on one key, each through its own client; returns the writers whose
/// write succeeded (with the tag) after checking that every other one got
/// `PreconditionFailed`.
async fn race(
    clients: &[AnyStore],
    key: &str,
    pre: Precondition,
    bytes: impl Fn(usize) -> Vec<u8>,
) -> Vec<(usize, ETag)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let (store, key, barrier, pre) =
                (store.clone(), key.to_string(), barrier.clone(), pre.clone());
            let bytes = bytes(w);
            tokio::spawn(async move {
                barrier.wait().await;
                (w, store.put(&key, bytes, pre).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (w, Ok(tag)) => winners.push((w, tag)),
            (_, Err(StoreError::PreconditionFailed)) => {}
            (w, Err(e)) => panic!("{key}: writer {w} failed with {e}"),
        }
    }
    winners
}

/// How many writers race, and on how many keys: enough that a store without atomic
/// conditional writes lets two through (both stores serialise them; the property, not an
/// interleaving, is asserted).
const WRITERS: usize = 16;
const RACES: usize = 6;

/// The fencing invariant: of concurrent create-only writers on one key, exactly one wins
/// and the object holds its bytes.
pub(super) async fn of_racing_create_only_writers_exactly_one_wins(s3: bool) {
    let s = Setup::new(s3).await;
    let clients: Vec<AnyStore> = (0..WRITERS).map(|_| s.client()).collect();
    let writer = |w: usize| format!("writer {w}").into_bytes();
    for r in 0..RACES {
        let key = keys::checkpoint(&job(&format!("race-{r}")));
        let winners = race(&clients, &key, Precondition::Absent, writer).await;
        assert_eq!(winners.len(), 1, "{key}: winners {winners:?}");
        let (w, tag) = &winners[0];
        let got = s.store.get(&key).await.unwrap().unwrap();
        assert_eq!(got.bytes, writer(*w), "{key}: the winner's bytes");
        assert_eq!(&got.etag, tag, "{key}");
    }
}

/// The same for a takeover: of concurrent writers all holding the current tag, exactly one
/// replaces the object; the others' tag is then stale.
pub(super) async fn of_racing_if_match_writers_exactly_one_wins(s3: bool) {
    let s = Setup::new(s3).await;
    let clients: Vec<AnyStore> = (0..WRITERS).map(|_| s.client()).collect();
    let key = keys::checkpoint(&job("takeover"));
    let mut tag = s
        .store
        .put(&key, b"original".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    for r in 0..RACES {
        let writer = |w: usize| format!("round {r} writer {w}").into_bytes();
        let winners = race(&clients, &key, Precondition::Matches(tag.clone()), writer).await;
        assert_eq!(winners.len(), 1, "round {r}: winners {winners:?}");
        let (w, won) = &winners[0];
        let got = s.store.get(&key).await.unwrap().unwrap();
        assert_eq!(got.bytes, writer(*w), "round {r}: the winner's bytes");
        assert_eq!(&got.etag, won, "round {r}");
        assert_ne!(won, &tag, "round {r}: the object changed");
        tag = won.clone();
    }
}
