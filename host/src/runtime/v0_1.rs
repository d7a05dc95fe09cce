//! The 0.1.0 world's imports, served by the same host state as 0.3.0's (its interfaces are
//! 0.3.0's taskhost interfaces without `inputs` and `artifacts`).

use super::bindings::taskhost::task as now;
use super::bindings::v0_1::taskhost::task::{checkpoint, job, log, progress};
use super::host::HostState;

fn error(e: now::checkpoint::CheckpointError) -> checkpoint::CheckpointError {
    use now::checkpoint::CheckpointError as E;
    match e {
        E::TooLarge(n) => checkpoint::CheckpointError::TooLarge(n),
        E::Conflict => checkpoint::CheckpointError::Conflict,
        E::Storage(m) => checkpoint::CheckpointError::Storage(m),
    }
}

impl checkpoint::Host for HostState {
    fn save(&mut self, data: Vec<u8>) -> Result<(), checkpoint::CheckpointError> {
        now::checkpoint::Host::save(self, data).map_err(error)
    }

    fn load(&mut self) -> Result<Option<Vec<u8>>, checkpoint::CheckpointError> {
        now::checkpoint::Host::load(self).map_err(error)
    }
}

impl progress::Host for HostState {
    fn report(&mut self, done: u64, total: u64) {
        now::progress::Host::report(self, done, total)
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) {
        use now::log::Level as L;
        let level = match level {
            log::Level::Trace => L::Trace,
            log::Level::Debug => L::Debug,
            log::Level::Info => L::Info,
            log::Level::Warn => L::Warn,
            log::Level::Error => L::Error,
        };
        self.log(level, message)
    }
}

impl job::Host for HostState {
    fn id(&mut self) -> String {
        now::job::Host::id(self)
    }

    fn attempt(&mut self) -> u32 {
        now::job::Host::attempt(self)
    }
}
