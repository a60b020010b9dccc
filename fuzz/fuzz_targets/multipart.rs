//! The zero-copy multipart reader on any body, cut into pieces where the input says: it ends
//! (no hang), never panics, and a part's data never contains the delimiter that ends it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

const BOUNDARY: &str = "fxb0und";

fuzz_target!(|data: &[u8]| {
    // First byte: how the body is cut (piece lengths 1..=256, cycling through the rest).
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let mut pieces = Vec::new();
    let mut rest = body;
    let mut n = 0usize;
    while !rest.is_empty() {
        let len = (usize::from(cut.wrapping_add(n as u8)) % 256 + 1).min(rest.len());
        pieces.push(Ok::<_, std::io::Error>(Bytes::copy_from_slice(
            &rest[..len],
        )));
        rest = &rest[len..];
        n += 1;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = futures_util::stream::iter(pieces);
        let mut mp =
            fxgate::upload::multipart::Multipart::new(stream, BOUNDARY, Duration::from_secs(5));
        let delim = format!("\r\n--{BOUNDARY}");
        // At most as many parts as the body has bytes: each takes a delimiter.
        for _ in 0..=body.len() {
            match mp.next_part().await {
                Ok(Some(_head)) => {
                    let mut data = Vec::new();
                    loop {
                        match mp.chunk().await {
                            Ok(Some(c)) => data.extend_from_slice(&c),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    assert!(
                        !data.windows(delim.len()).any(|w| w == delim.as_bytes()),
                        "a part's data holds its own delimiter"
                    );
                    assert!(data.len() <= body.len());
                }
                Ok(None) | Err(_) => return,
            }
        }
        panic!("more parts than the body could hold");
    });
});
