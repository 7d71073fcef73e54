//! The FastCGI 1.0 protocol, sans I/O: records, name-value pairs, and the application side
//! of a connection as a state machine. Used by the worker and by the test client alike.

pub mod head;
pub mod params;
pub mod record;
pub mod session;

pub use params::{Limits, Params};
pub use record::{ProtocolError, ProtocolStatus, Record, RecordType, Role};
pub use session::{Event, Request, ServerValues, Session};

#[cfg(test)]
mod proptests;
