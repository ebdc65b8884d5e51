//! Small shared helpers with no dependency on the rest of the crate: outside text made
//! printable ([`text`]), rate-limited logging ([`quiet`]), the TLS crypto provider ([`tls`]),
//! the wall clock ([`time`]).

pub mod quiet;
pub mod text;
pub mod time;
pub mod tls;
