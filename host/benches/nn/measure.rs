//! The nn benchmark's measures: wall and CPU time, medians, and the pieces of the task's fixed
//! cost per inference measured alone.

use std::time::{Duration, Instant};

use super::{BATCH, CLASSES, FEATURES};

/// Wall time and the process's CPU time (user + system, all threads).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cost {
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
}

impl Cost {
    pub(crate) fn per(self, n: u32) -> Cost {
        Cost {
            wall: self.wall / n,
            cpu: self.cpu / n,
        }
    }

    pub(crate) fn minus(self, o: Cost) -> Cost {
        Cost {
            wall: self.wall.saturating_sub(o.wall),
            cpu: self.cpu.saturating_sub(o.cpu),
        }
    }
}

/// The process's CPU time so far (every thread, user + system).
#[allow(unsafe_code)]
fn cpu_now() -> Duration {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a whole `rusage` through the valid pointer it is given and
    // reads nothing; RUSAGE_SELF cannot fail.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Starts a measurement; `.1()` ends it.
pub(crate) fn start() -> (Instant, Duration) {
    (Instant::now(), cpu_now())
}

pub(crate) fn since((wall, cpu): (Instant, Duration)) -> Cost {
    Cost {
        wall: wall.elapsed(),
        cpu: cpu_now().saturating_sub(cpu),
    }
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// "median (min to max)" in ms.
pub(crate) fn spread(v: &[Duration], digits: usize) -> String {
    let (lo, hi) = (v.iter().min().unwrap(), v.iter().max().unwrap());
    format!(
        "{:.digits$} ({:.digits$} to {:.digits$})",
        ms(median(v.to_vec())),
        ms(*lo),
        ms(*hi)
    )
}

/// CPU time per call of `f`, over `calls` calls.
async fn per_call<F: std::future::Future>(calls: u32, mut f: impl FnMut() -> F) -> Duration {
    let began = start();
    for _ in 0..calls {
        std::hint::black_box(f().await);
    }
    since(began).per(calls).cpu
}

/// The pieces of the task's fixed cost per inference, each measured alone in CPU time: the
/// hop from the runtime to the thread ONNX Runtime runs on and back (a call doing nothing),
/// and the copies of the tiny model's tensors (its input lifted out of the task's memory, its
/// output read out of ONNX Runtime's buffer).
pub(crate) async fn pieces(calls: u32) {
    let thread = taskhost::nn::thread::Pool::new(1, 1).take().unwrap();
    let input = vec![1u8; (BATCH * FEATURES * 4) as usize];
    let output = vec![1u8; (BATCH * CLASSES * 4) as usize];
    let (mut blocking, mut own, mut copy_in, mut copy_out) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        blocking.push(per_call(calls, || tokio::task::spawn_blocking(|| 1u8)).await);
        own.push(per_call(calls, || thread.run(|| 1u8)).await);
        copy_in.push(per_call(calls, || std::future::ready(input.to_vec())).await);
        copy_out.push(per_call(calls, || std::future::ready(output.to_vec())).await);
    }
    let us = |v: Vec<Duration>| median(v).as_secs_f64() * 1e6;
    println!(
        "pieces of the fixed cost, CPU µs per call, median of 5 runs of {calls}; load average {}:",
        load_average()
    );
    println!(
        "  a call on tokio's spawn_blocking (a no-op)       {:.1}",
        us(blocking)
    );
    println!(
        "  a call on an inference thread (a no-op)          {:.1}",
        us(own)
    );
    println!(
        "  a copy of the input ({} KiB) into a new Vec        {:.1}",
        input.len() >> 10,
        us(copy_in)
    );
    println!(
        "  a copy of the output ({} KiB) into a new Vec        {:.1}",
        output.len() >> 10,
        us(copy_out)
    );
}
