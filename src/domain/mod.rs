//! Domain types: they carry the rules (allowed transitions, valid percentages,
//! gapless sequence numbers) and their unit tests; nothing here does I/O.

pub mod fields;
mod ids;
mod job;
mod status;
mod submission;

pub use ids::{BadEventSeq, EventSeq, JobId, Timestamp};
pub use job::{
    BadPercent, CancelDecision, EventKind, JobError, JobRecord, NewEvent, Progress, Refused,
    Transition,
};
pub use status::{JobStatus, UnknownStatus};
pub use submission::{escape_pointer, json_equal, FieldError, Submission};
