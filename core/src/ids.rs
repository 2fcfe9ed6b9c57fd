//! The identifiers the broker's parts use to refer to each other.

/// A session, numbered by the broker in creation order.
pub(crate) type SessionId = u64;
