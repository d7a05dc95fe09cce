//! The host side of the WIT interfaces `inputs` and `artifacts`: thin adapters from the
//! generated traits onto [`crate::files`]. Artifact handles live in the store's resource
//! table; a handle the guest forged or reused traps.

use wasmtime::component::Resource;

use super::bindings::taskhost::task::{artifacts, inputs};
use super::host::HostState;
use crate::files::{ArtifactError, ArtifactHandle, InputError};

fn input_error(e: InputError) -> inputs::InputError {
    match e {
        InputError::NoSuchInput(n) => inputs::InputError::NoSuchInput(n),
        InputError::Missing(n) => inputs::InputError::Missing(n),
        InputError::LimitReached(n) => inputs::InputError::LimitReached(n),
        InputError::Storage(m) => inputs::InputError::Storage(m),
    }
}

fn artifact_error(e: ArtifactError) -> artifacts::ArtifactError {
    match e {
        ArtifactError::InvalidName(m) => artifacts::ArtifactError::InvalidName(m),
        ArtifactError::TooLarge(n) => artifacts::ArtifactError::TooLarge(n),
        ArtifactError::JobLimit(n) => artifacts::ArtifactError::JobLimit(n),
        ArtifactError::Finished => artifacts::ArtifactError::Finished,
        ArtifactError::Conflict => artifacts::ArtifactError::Conflict,
        ArtifactError::Storage(m) => artifacts::ArtifactError::Storage(m),
    }
}

impl inputs::Host for HostState {
    async fn list(&mut self) -> Result<Vec<inputs::InputInfo>, inputs::InputError> {
        let _waiting = self.files.store_wait.start();
        let list = self.files.inputs.list().await.map_err(input_error)?;
        Ok(list
            .into_iter()
            .map(|(name, size)| inputs::InputInfo { name, size })
            .collect())
    }

    async fn read(
        &mut self,
        name: String,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, inputs::InputError> {
        tracing::trace!(job = %self.job, input = %crate::ids::shown_name(&name), offset, len, "inputs.read");
        let _waiting = self.files.store_wait.start();
        self.files
            .inputs
            .read(&name, offset, len)
            .await
            .map_err(input_error)
    }
}

type ArtifactResult<T> = wasmtime::Result<Result<T, artifacts::ArtifactError>>;

impl HostState {
    fn push_artifact(&mut self, h: ArtifactHandle) -> wasmtime::Result<Resource<ArtifactHandle>> {
        Ok(self.table.push(h)?)
    }
}

impl artifacts::Host for HostState {
    async fn create(&mut self, name: String) -> ArtifactResult<Resource<ArtifactHandle>> {
        match self.files.artifacts.create(&name) {
            Ok(h) => Ok(Ok(self.push_artifact(h)?)),
            Err(e) => Ok(Err(artifact_error(e))),
        }
    }

    async fn resume(&mut self, name: String) -> ArtifactResult<Option<Resource<ArtifactHandle>>> {
        let _waiting = self.files.store_wait.start();
        match self.files.artifacts.resume(&name).await {
            Ok(Some(h)) => Ok(Ok(Some(self.push_artifact(h)?))),
            Ok(None) => Ok(Ok(None)),
            Err(e) => Ok(Err(artifact_error(e))),
        }
    }
}

impl artifacts::HostArtifact for HostState {
    async fn write(&mut self, this: Resource<ArtifactHandle>, data: Vec<u8>) -> ArtifactResult<()> {
        let _waiting = self.files.store_wait.start();
        let artifacts = self.files.artifacts.clone();
        let h = self.table.get(&this)?;
        Ok(artifacts.write(h, data).await.map_err(artifact_error))
    }

    async fn size(&mut self, this: Resource<ArtifactHandle>) -> wasmtime::Result<u64> {
        Ok(self.files.artifacts.size(self.table.get(&this)?))
    }

    async fn finish(&mut self, this: Resource<ArtifactHandle>) -> ArtifactResult<u64> {
        let _waiting = self.files.store_wait.start();
        let artifacts = self.files.artifacts.clone();
        let h = self.table.get(&this)?;
        Ok(artifacts.finish(h).await.map_err(artifact_error))
    }

    async fn drop(&mut self, this: Resource<ArtifactHandle>) -> wasmtime::Result<()> {
        let h = self.table.delete(this)?;
        self.files.artifacts.drop_handle(h);
        Ok(())
    }
}
