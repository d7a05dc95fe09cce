//! The 0.2.0 world's imports, served by the same host state as 0.3.0's: its interfaces are
//! 0.3.0's taskhost interfaces (0.3.0 only adds `wasi:nn`), so each call goes to 0.3.0's.

use wasmtime::component::Resource;

use super::bindings::taskhost::task as now;
use super::bindings::v0_2::taskhost::task::{artifacts, checkpoint, inputs, job, log, progress};
use super::host::HostState;
use crate::files::ArtifactHandle;

fn checkpoint_error(e: now::checkpoint::CheckpointError) -> checkpoint::CheckpointError {
    use now::checkpoint::CheckpointError as E;
    match e {
        E::TooLarge(n) => checkpoint::CheckpointError::TooLarge(n),
        E::Conflict => checkpoint::CheckpointError::Conflict,
        E::Storage(m) => checkpoint::CheckpointError::Storage(m),
    }
}

fn input_error(e: now::inputs::InputError) -> inputs::InputError {
    use now::inputs::InputError as E;
    match e {
        E::NoSuchInput(n) => inputs::InputError::NoSuchInput(n),
        E::Missing(n) => inputs::InputError::Missing(n),
        E::LimitReached(n) => inputs::InputError::LimitReached(n),
        E::Storage(m) => inputs::InputError::Storage(m),
    }
}

fn artifact_error(e: now::artifacts::ArtifactError) -> artifacts::ArtifactError {
    use now::artifacts::ArtifactError as E;
    match e {
        E::InvalidName(m) => artifacts::ArtifactError::InvalidName(m),
        E::TooLarge(n) => artifacts::ArtifactError::TooLarge(n),
        E::JobLimit(n) => artifacts::ArtifactError::JobLimit(n),
        E::Finished => artifacts::ArtifactError::Finished,
        E::Conflict => artifacts::ArtifactError::Conflict,
        E::Storage(m) => artifacts::ArtifactError::Storage(m),
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

impl inputs::Host for HostState {
    async fn list(&mut self) -> Result<Vec<inputs::InputInfo>, inputs::InputError> {
        let list = now::inputs::Host::list(self).await.map_err(input_error)?;
        Ok(list
            .into_iter()
            .map(|i| inputs::InputInfo {
                name: i.name,
                size: i.size,
            })
            .collect())
    }

    async fn read(
        &mut self,
        name: String,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, inputs::InputError> {
        now::inputs::Host::read(self, name, offset, len)
            .await
            .map_err(input_error)
    }
}

type ArtifactResult<T> = wasmtime::Result<Result<T, artifacts::ArtifactError>>;

impl artifacts::Host for HostState {
    async fn create(&mut self, name: String) -> ArtifactResult<Resource<ArtifactHandle>> {
        Ok(now::artifacts::Host::create(self, name)
            .await?
            .map_err(artifact_error))
    }

    async fn resume(&mut self, name: String) -> ArtifactResult<Option<Resource<ArtifactHandle>>> {
        Ok(now::artifacts::Host::resume(self, name)
            .await?
            .map_err(artifact_error))
    }
}

impl artifacts::HostArtifact for HostState {
    async fn write(&mut self, this: Resource<ArtifactHandle>, data: Vec<u8>) -> ArtifactResult<()> {
        Ok(now::artifacts::HostArtifact::write(self, this, data)
            .await?
            .map_err(artifact_error))
    }

    async fn size(&mut self, this: Resource<ArtifactHandle>) -> wasmtime::Result<u64> {
        now::artifacts::HostArtifact::size(self, this).await
    }

    async fn finish(&mut self, this: Resource<ArtifactHandle>) -> ArtifactResult<u64> {
        Ok(now::artifacts::HostArtifact::finish(self, this)
            .await?
            .map_err(artifact_error))
    }

    async fn drop(&mut self, this: Resource<ArtifactHandle>) -> wasmtime::Result<()> {
        now::artifacts::HostArtifact::drop(self, this).await
    }
}
