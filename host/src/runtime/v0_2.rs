//! The 0.2.0 world's imports, served by the same host state as 0.3.0's: its interfaces are
//! 0.3.0's taskhost interfaces (0.3.0 only adds `wasi:nn`), so each call goes to 0.3.0's.

use wasmtime::component::Resource;

use super::bindings::v0_2::taskhost::task::{artifacts, inputs};
use crate::files::ArtifactHandle;

super::forward::forward_core!(
    world: super::bindings::v0_2::taskhost::task,
    now: super::bindings::taskhost::task
);

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
