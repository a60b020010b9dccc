//! Everything that talks to Fxiaoke: the HTTP client per corp (`client`), the corp token
//! provider (`token`), and the reading of Fxiaoke's answers (`envelope`).

pub mod body;
pub mod client;
pub mod envelope;
pub mod shared_token;
pub mod token;

pub use client::Corp;
