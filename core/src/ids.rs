//! The identifiers the broker's parts use to refer to each other.

/// A session, numbered by the broker in creation order.
pub(crate) type SessionId = u64;

/// A bridge, numbered by the broker when it is configured; a reconfigured bridge keeps its
/// number, a removed one's is never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BridgeId(pub u32);
