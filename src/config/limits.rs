//! The one rule for how large an upload's file may be (design §4 step 3), asked by the quota
//! layer (before any of the caller's daily bytes are reserved) and by the upload itself, so a
//! file over the caller's own `max_file_bytes` is 413 whatever its bytes today (never 429).

use super::{ClientConfig, UploadConfig};
use crate::route::Route;

/// Multipart framing a caller may add around the file before a `Content-Length` above the
/// file limit is refused outright; the file itself is still held to the exact limit.
pub const MULTIPART_FRAMING_ALLOWANCE: u64 = 16 * 1024;

impl UploadConfig {
    /// The file limit of an upload to `route` (`document`: `?type=document`) by `client`:
    /// the route's, or the caller's own `max_file_bytes` if lower.
    pub fn file_limit(&self, route: Route, document: bool, client: &ClientConfig) -> u64 {
        let route_limit = match route {
            Route::Upload if document => self.document_max_bytes,
            Route::UploadFile => self.file_max_bytes,
            _ => self.message_max_bytes,
        };
        client
            .max_file_bytes
            .map_or(route_limit, |own| own.min(route_limit))
    }
}

/// Whether a body announcing `announced` bytes cannot hold a file within `limit`: a multipart
/// body gets `MULTIPART_FRAMING_ALLOWANCE` for its framing.
pub fn announced_too_large(announced: u64, limit: u64, multipart: bool) -> bool {
    let allowance = if multipart {
        MULTIPART_FRAMING_ALLOWANCE
    } else {
        0
    };
    announced > limit.saturating_add(allowance)
}
