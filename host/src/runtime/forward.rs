//! The imports every world version has (`checkpoint`, `progress`, `log`, `job`), served for
//! an older world by forwarding each call to 0.3.0's host state: one macro, used by
//! [`super::v0_1`] and [`super::v0_2`], whose bindgen types differ only in their module.

/// Implements `checkpoint`, `progress`, `log` and `job` of the world at `$world` (the
/// bindgen module holding those interfaces) for `HostState`, each call going to
/// `$now` (0.3.0's module). Also defines `checkpoint_error`, the conversion of 0.3.0's
/// checkpoint error into the older world's.
macro_rules! forward_core {
    (world: $($world:ident)::+, now: $($now:ident)::+) => {
        use $($world)::+::{checkpoint, job, log, progress};
        use $($now)::+ as now;
        use super::host::HostState;

        fn checkpoint_error(e: now::checkpoint::CheckpointError) -> checkpoint::CheckpointError {
            use now::checkpoint::CheckpointError as E;
            match e {
                E::TooLarge(n) => checkpoint::CheckpointError::TooLarge(n),
                E::Conflict => checkpoint::CheckpointError::Conflict,
                E::Storage(m) => checkpoint::CheckpointError::Storage(m),
            }
        }

        impl checkpoint::Host for HostState {
            fn save(&mut self, data: Vec<u8>) -> Result<(), checkpoint::CheckpointError> {
                now::checkpoint::Host::save(self, data).map_err(checkpoint_error)
            }

            fn load(&mut self) -> Result<Option<Vec<u8>>, checkpoint::CheckpointError> {
                now::checkpoint::Host::load(self).map_err(checkpoint_error)
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
                self.log.log(&self.job, level, message)
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
    };
}

pub(super) use forward_core;
