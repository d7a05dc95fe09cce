//! The metrics' labels: each a small closed enum (`label_values!`: the values, their names
//! and their encoding) and the one-label sets the families are keyed by. Never a job id, a
//! key, an error text or a secret.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A closed set of label values: the enum, its names, and the encoding as those names.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order (each series exists from the start).
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// How a job's delivery ended: one value per failure class of docs/design.md §6.
    JobOutcome {
        /// The result is durable.
        Done => "done",
        /// A result existed: nothing ran.
        AlreadyDone => "already_done",
        /// The message is not a job (bad JSON, no valid job id, bad module reference).
        Poison => "poison",
        /// The module is not in the store (yet).
        ModuleMissing => "module_missing",
        /// The module is unusable (tampered with, not a component, wrong world).
        BadModule => "bad_module",
        /// The task returned an error.
        TaskFailed => "task_failed",
        /// The task trapped (panic, fuel, memory, timeout, ...).
        Trapped => "trapped",
        /// The checkpoint cannot be read.
        Unreadable => "unreadable",
        /// Too many runs in a row without a clean end.
        Crashed => "crashed",
        /// The job's own input or artifact calls kept failing.
        StorageRepeated => "storage_repeated",
        /// The job is stored for other work.
        OtherWork => "other_work",
        /// Another worker runs the job under a live lease.
        Busy => "busy",
        /// Another worker took the job over (412 on the checkpoint).
        Conflict => "conflict",
        /// The queue lease was lost.
        LeaseLost => "lease_lost",
        /// Stopped for shutdown.
        Interrupted => "interrupted",
        /// Cancelled by a user (`job cancel`).
        Cancelled => "cancelled",
        /// Paused by a user (`job pause`).
        Paused => "paused",
        /// The store failed: retried later.
        Storage => "storage",
        /// The host could not run the task (not the task's fault).
        HostFault => "host_fault",
        /// A host function panicked serving the task (a bug of ours the task reached).
        HostPanic => "host_panic",
    }
}

label_values! {
    /// What the worker did with a message.
    Settle {
        /// Acknowledged: the queue forgets it.
        Ack => "ack",
        /// Handed back (nacked, perhaps after a delay) for a later delivery.
        HandBack => "hand_back",
        /// Recorded as failed on the dead-letter topic, then acknowledged.
        DeadLetter => "dead_letter",
    }
}

label_values! {
    /// How a pull ended.
    PullResult {
        /// At least one message.
        Messages => "messages",
        /// No message.
        Empty => "empty",
        /// The pull failed.
        Error => "error",
    }
}

label_values! {
    /// How a lease extension ended.
    ExtensionResult {
        /// Extended.
        Ok => "ok",
        /// Failed (or timed out); retried.
        Retried => "retried",
        /// Refused, failed permanently, or the lease ran out: the job stops.
        Lost => "lost",
    }
}

label_values! {
    /// How a checkpoint write ended.
    WriteResult {
        /// Written.
        Ok => "ok",
        /// 412: another worker owns the job now.
        Conflict => "conflict",
        /// Any other failure (a store error).
        Error => "error",
    }
}

label_values! {
    /// A store error's kind ([`crate::store::ErrorKind`], without `precondition_failed`,
    /// which is an answer of the protocol, not an error).
    StoreErrorKind {
        /// [`crate::store::ErrorKind::Transient`].
        Transient => "transient",
        /// [`crate::store::ErrorKind::Throttled`].
        Throttled => "throttled",
        /// [`crate::store::ErrorKind::NotFound`].
        NotFound => "not_found",
        /// [`crate::store::ErrorKind::AccessDenied`].
        AccessDenied => "access_denied",
        /// [`crate::store::ErrorKind::BadRequest`].
        BadRequest => "bad_request",
        /// [`crate::store::ErrorKind::TooLarge`].
        TooLarge => "too_large",
    }
}

label_values! {
    /// A queue error's kind ([`crate::queue::ErrorKind`]).
    QueueErrorKind {
        /// [`crate::queue::ErrorKind::Transient`].
        Transient => "transient",
        /// [`crate::queue::ErrorKind::NotFound`].
        NotFound => "not_found",
        /// [`crate::queue::ErrorKind::Permanent`].
        Permanent => "permanent",
    }
}

label_values! {
    /// Where a compiled module came from.
    CacheResult {
        /// Memory or this node's disk cache.
        Hit => "hit",
        /// Fetched from the bucket and compiled.
        Miss => "miss",
    }
}

/// The label set of `taskhost_jobs_ended`: one label, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How the delivery ended.
    pub outcome: JobOutcome,
}

/// The label set of `taskhost_messages_settled`: one label, `action`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// What was done with the message.
    pub action: Settle,
}

/// The label set of `taskhost_pulls`: one label, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabel {
    /// How the pull ended.
    pub result: PullResult,
}

/// The label set of `taskhost_lane_messages_pulled`: one label, `lane` (a lane's name: the
/// names are configuration, `LANES`, so bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// The lane's name.
    pub lane: String,
}

/// The label set of `taskhost_lease_extensions`: one label, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtensionLabel {
    /// How the extension ended.
    pub result: ExtensionResult,
}

/// The label set of `taskhost_checkpoint_writes`: one label, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    /// How the write ended.
    pub result: WriteResult,
}

/// The label set of `taskhost_store_errors`: one label, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreKindLabel {
    /// The store error's kind.
    pub kind: StoreErrorKind,
}

/// The label set of `taskhost_queue_errors`: one label, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueKindLabel {
    /// The queue error's kind.
    pub kind: QueueErrorKind,
}

/// The label set of `taskhost_module_cache`: one label, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// Where the compiled module came from.
    pub result: CacheResult,
}
