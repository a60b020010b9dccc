//! fxgate: an authenticating, streaming media gateway in front of the Fxiaoke OpenAPI.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; the tests and benches use the
//! library and the binary directly. Start at `app` for how the pieces fit.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod body;
pub mod clock;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod healthcheck;
pub mod metrics;
pub mod middleware;
pub mod quota;
pub mod route;
pub mod routes;
pub mod sandbox;
pub mod server;
pub mod session;
pub mod sniff;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod upload;
pub mod upstream;
pub mod watch;
pub mod worker;

pub use config::Config;
pub use error::GatewayError;

pub use body::BoxError;
