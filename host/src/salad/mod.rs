//! What taskhost uses of SaladCloud. From inside an instance: the instance metadata service
//! ([`imds`]), the deletion cost kept current ([`cost`]) and reallocation when the node is
//! the problem ([`reallocate`]). From outside: the autoscaling decision ([`autoscale`]) and
//! the public API's container group calls it needs ([`api`]).
//!
//! A leaf: uses no other module of the crate. The binary decides whether the process runs on
//! SaladCloud (`SALAD_MACHINE_ID` set) and only then builds an [`Imds`].
//! **Invariants:** nothing the worker uses here is ever fatal or holds a job up: every IMDS
//! call is bounded in time ([`imds::DEFAULT_IMDS_TIMEOUT`]) and its failure is logged; the API
//! key of [`api`] is never shown (no `Debug`, error or log line holds it).

pub mod api;
pub mod autoscale;
pub mod cost;
pub mod imds;
pub mod reallocate;

pub use cost::{DeletionCost, deletion_cost};
pub use imds::{Imds, ImdsConfig, ImdsError};
pub use reallocate::{ReallocateConfig, Reallocator};
