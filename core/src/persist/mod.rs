//! Durable state as records: what the broker asks its store to keep, their binary form, the
//! journal framing around them, and replay into the state a restarted broker resumes from.
//!
//! Pure: the runtime owns the files and the group commit; everything here takes and returns
//! bytes, so the recovery decoder is fuzzed like every other parser.

mod journal;
mod record;
mod recovered;

pub use journal::{
    BATCH_PART_LEN, FileKind, HEADER_LEN, JournalError, MAX_BATCH_LEN, MAX_RECORD_LEN, Scan,
    crc32c, decode_header, encode_batch, encode_batch_parts, encode_frame, encode_header,
    encode_snapshot_end, read_snapshot, scan_segment,
};
pub use record::{Record, StoredMessage};
pub use recovered::{BridgeEntry, QueuedDelivery, Recovered, RecoveredSession};
