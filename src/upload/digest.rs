//! A caller's claimed SHA-256 of the file: `Repr-Digest` / `Content-Digest` (RFC 9530,
//! `sha-256=:<base64>:`; other algorithms are ignored) or `X-Content-SHA256: <hex>`. Both
//! RFC 9530 headers are taken as the digest of the *file*, as the design brief specifies,
//! even for multipart bodies. Claims that disagree with each other are refused.

use base64::Engine as _;
use http::HeaderMap;

use crate::error::GatewayError;

fn bad(detail: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        detail: detail.into(),
    }
}

/// The sha-256 member of an RFC 9530 dictionary header, if present.
fn from_dictionary(name: &str, value: &str) -> Result<Option<[u8; 32]>, GatewayError> {
    for member in value.split(',') {
        let Some((alg, val)) = member.trim().split_once('=') else {
            continue;
        };
        if !alg.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let b64 = val
            .trim()
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .ok_or_else(|| {
                bad(format!(
                    "{name}: sha-256 value must be a byte sequence, e.g. sha-256=:<base64>:"
                ))
            })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad(format!("{name}: sha-256 value is not valid base64")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad(format!("{name}: sha-256 value must be 32 bytes")))?;
        return Ok(Some(arr));
    }
    Ok(None)
}

/// The digest the caller claims for the file, if any.
pub fn claimed(headers: &HeaderMap) -> Result<Option<[u8; 32]>, GatewayError> {
    let mut found: Option<[u8; 32]> = None;
    let mut add = |d: [u8; 32]| -> Result<(), GatewayError> {
        match found {
            Some(prev) if prev != d => Err(bad("the digest headers disagree with each other")),
            _ => {
                found = Some(d);
                Ok(())
            }
        }
    };
    for name in ["repr-digest", "content-digest"] {
        for value in headers.get_all(name) {
            let v = value
                .to_str()
                .map_err(|_| bad(format!("{name} is not ASCII")))?;
            if let Some(d) = from_dictionary(name, v)? {
                add(d)?;
            }
        }
    }
    if let Some(value) = headers.get("x-content-sha256") {
        let v = value
            .to_str()
            .map_err(|_| bad("x-content-sha256 is not ASCII"))?;
        let mut d = [0u8; 32];
        hex::decode_to_slice(v.trim(), &mut d)
            .map_err(|_| bad("x-content-sha256 must be 64 hex digits"))?;
        add(d)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_each_form_and_ignores_other_algorithms() {
        let expected = hex::decode(EMPTY_HEX).unwrap();
        for h in [
            headers(&[("repr-digest", &format!("sha-256=:{EMPTY_B64}:"))]),
            headers(&[(
                "content-digest",
                &format!("sha-512=:AAAA:, sha-256=:{EMPTY_B64}:"),
            )]),
            headers(&[("x-content-sha256", EMPTY_HEX)]),
            headers(&[
                ("x-content-sha256", EMPTY_HEX),
                ("repr-digest", &format!("sha-256=:{EMPTY_B64}:")),
            ]),
        ] {
            assert_eq!(
                claimed(&h).unwrap().map(|d| d.to_vec()),
                Some(expected.clone())
            );
        }
        assert_eq!(
            claimed(&headers(&[("content-digest", "sha-512=:AAAA:")])).unwrap(),
            None
        );
        assert_eq!(claimed(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn rejects_malformed_or_conflicting_claims() {
        assert!(claimed(&headers(&[("repr-digest", "sha-256=abc")])).is_err());
        assert!(claimed(&headers(&[("repr-digest", "sha-256=:AAAA:")])).is_err());
        assert!(claimed(&headers(&[("x-content-sha256", "xyz")])).is_err());
        let other = "0".repeat(64);
        assert!(claimed(&headers(&[
            ("x-content-sha256", &other),
            ("repr-digest", &format!("sha-256=:{EMPTY_B64}:"))
        ]))
        .is_err());
    }
}
