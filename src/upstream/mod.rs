//! Everything that talks to Fxiaoke: one `Corp` per tenant (`corp`), the HTTP client (`transport`), the corp token
//! provider (`token`), and the reading of Fxiaoke's answers (`envelope`).

pub mod body;
pub mod budget;
pub mod call;
pub mod corp;
pub mod envelope;
pub mod files;
pub mod media;
pub mod timing;
pub mod token;
pub mod transport;

pub use corp::Corp;
