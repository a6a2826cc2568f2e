//! Domain types: they carry the rules (allowed transitions, valid percentages,
//! gapless sequence numbers) and their unit tests; nothing here does I/O.

mod cancel;
mod event_data;
pub mod fields;
mod ids;
mod job;
mod lease;
mod recovery;
mod status;
mod submission;

pub use cancel::CancelDecision;
pub use ids::{BadEventSeq, EventSeq, JobId, Timestamp};
pub use job::{
    BadPercent, EventKind, JobError, JobRecord, NewEvent, Progress, Refused, Transition,
};
pub use lease::{LeaseOp, LeasePlan, LeaseRefused, LeaseTerms, LeaseWrite, Report};
pub use status::{JobStatus, UnknownStatus};
pub use submission::{
    escape_pointer, json_equal, FieldError, StartedAtOnce, Submission, Submitted,
};
