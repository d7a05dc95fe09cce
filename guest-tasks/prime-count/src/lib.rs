//! `prime_count.wasm`: the CPU-bound task module.
//!
//! Input: `{"job_id": .., "n": 1000000}`, plus optional `"chunk"` (default
//! [`DEFAULT_CHUNK`]).
//!
//! Counts the primes below `n` by plain trial division ([`prime_core::count_primes`], the
//! same code the host's benchmark runs natively), `chunk` numbers at a time. After each
//! chunk it checkpoints `{"next": .., "count": ..}` and reports progress (`done` = next,
//! `total` = n); on start it resumes from its checkpoint.
//!
//! Output: `{"job_id": .., "n": .., "primes": ..}` (n = 100000: 9592 primes).

use prime_core::count_primes;
use serde::{Deserialize, Serialize};
use taskhost_guest::input::Fields;
use taskhost_guest::{Error, Task, bail, checkpoint, job, log, progress};

/// Numbers tested between checkpoints when the input has no `"chunk"`.
pub const DEFAULT_CHUNK: u64 = 50_000;

/// The checkpoint: every number below `next` is counted, `count` of them are prime.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct State {
    next: u64,
    count: u64,
}

/// The result document.
#[derive(Serialize)]
struct Output {
    job_id: String,
    n: u64,
    primes: u64,
}

struct PrimeCount;

impl Task for PrimeCount {
    type Input = Fields;
    type Output = Output;

    fn run(input: Fields) -> Result<Output, Error> {
        let n = input.u64("n")?;
        let chunk = input.u64_or("chunk", DEFAULT_CHUNK)?;
        if chunk == 0 {
            bail!("\"chunk\" must be at least 1");
        }
        let job_id = input.job_id();

        let mut state = match checkpoint::load::<State>()? {
            Some(saved) => {
                if saved.next > n || saved.count > saved.next {
                    bail!(
                        "the checkpoint (next {}, count {}) does not fit n = {n}",
                        saved.next,
                        saved.count
                    );
                }
                log::info(format!(
                    "resuming at {} of {n} with {} primes so far (attempt {})",
                    saved.next,
                    saved.count,
                    job::attempt()
                ));
                saved
            }
            None => {
                log::info(format!(
                    "counting primes below {n} in chunks of {chunk} (attempt {})",
                    job::attempt()
                ));
                State::default()
            }
        };
        progress::report(state.next, n);

        while state.next < n {
            let end = state.next.saturating_add(chunk).min(n);
            state.count += count_primes(state.next, end);
            state.next = end;
            checkpoint::save(&state)?;
            progress::report(state.next, n);
        }

        Ok(Output {
            job_id,
            n,
            primes: state.count,
        })
    }
}

taskhost_guest::export_task!(PrimeCount);
