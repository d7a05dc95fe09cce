//! What taskhost uses of SaladCloud from inside an instance: the instance metadata service
//! ([`imds`]), the deletion cost kept current ([`cost`]) and reallocation when the node is
//! the problem ([`reallocate`]).
//!
//! A leaf: uses no other module of the crate. The binary decides whether the process runs on
//! SaladCloud (`SALAD_MACHINE_ID` set) and only then builds an [`Imds`].
//! **Invariant:** nothing here is ever fatal or holds a job up: every IMDS call is bounded in
//! time ([`imds::DEFAULT_IMDS_TIMEOUT`]) and its failure is logged.

pub mod cost;
pub mod imds;
pub mod reallocate;

pub use cost::{DeletionCost, deletion_cost};
pub use imds::{Imds, ImdsConfig, ImdsError};
pub use reallocate::{ReallocateConfig, Reallocator};
