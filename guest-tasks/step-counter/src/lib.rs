//! `step_counter.wasm`: the guide's job, as a task module.
//!
//! Input: `{"job_id": "job-0", "steps": 600}`, plus optional `"step_ms"` (a real sleep per
//! step, default [`DEFAULT_STEP_MS`]) and `"checkpoint_every"` (default
//! [`DEFAULT_CHECKPOINT_EVERY`]).
//!
//! Step `i` (1..=steps) adds `i` to a running sum. The task checkpoints
//! `{"step": .., "sum": ..}` every `checkpoint_every` steps and at the end, reports progress
//! (`done` = step, `total` = steps) on every step, and on start resumes after the step of
//! its checkpoint, logging `resuming at step K (attempt N)` (K = the last step saved).
//!
//! Output: `{"job_id": .., "steps": N, "sum": N*(N+1)/2}` (600 steps: sum 180300).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskhost_guest::input::Fields;
use taskhost_guest::{Error, Task, bail, checkpoint, job, log, progress};

/// Milliseconds slept per step when the input has no `"step_ms"`.
pub const DEFAULT_STEP_MS: u64 = 0;

/// Steps between checkpoints when the input has no `"checkpoint_every"`.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1;

/// The checkpoint: the last completed step and the sum so far.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct State {
    step: u64,
    sum: u64,
}

/// The result document.
#[derive(Serialize)]
struct Output {
    job_id: String,
    steps: u64,
    sum: u64,
}

struct StepCounter;

impl Task for StepCounter {
    type Input = Fields;
    type Output = Output;

    fn run(input: Fields) -> Result<Output, Error> {
        let steps = input.u64("steps")?;
        let step_ms = input.u64_or("step_ms", DEFAULT_STEP_MS)?;
        let every = input.u64_or("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)?;
        if every == 0 {
            bail!("\"checkpoint_every\" must be at least 1");
        }
        let job_id = input.job_id();

        let mut state = match checkpoint::load::<State>()? {
            Some(saved) => {
                check(saved, steps)?;
                log::info(format!(
                    "resuming at step {} (attempt {})",
                    saved.step,
                    job::attempt()
                ));
                saved
            }
            None => {
                log::info(format!(
                    "starting {steps} steps (attempt {})",
                    job::attempt()
                ));
                State::default()
            }
        };
        progress::report(state.step, steps);

        let mut saved_step = state.step;
        while state.step < steps {
            if step_ms > 0 {
                std::thread::sleep(Duration::from_millis(step_ms));
            }
            state.step += 1;
            state.sum = state
                .sum
                .checked_add(state.step)
                .ok_or_else(|| Error::msg("the sum overflows a 64-bit integer: use fewer steps"))?;
            if state.step.is_multiple_of(every) {
                checkpoint::save(&state)?;
                saved_step = state.step;
            }
            progress::report(state.step, steps);
        }
        if saved_step != state.step {
            checkpoint::save(&state)?;
        }

        Ok(Output {
            job_id,
            steps,
            sum: state.sum,
        })
    }
}

/// Checks that a loaded checkpoint belongs to this job: not past its end, and a sum that
/// matches its step (the sum of 1..=step).
fn check(saved: State, steps: u64) -> Result<(), Error> {
    if saved.step > steps {
        bail!(
            "the checkpoint is at step {} but the job has only {steps} steps",
            saved.step
        );
    }
    let expected = u128::from(saved.step) * (u128::from(saved.step) + 1) / 2;
    if u128::from(saved.sum) != expected {
        bail!(
            "the checkpoint is inconsistent: sum {} at step {} (expected {expected})",
            saved.sum,
            saved.step
        );
    }
    Ok(())
}

taskhost_guest::export_task!(StepCounter);
