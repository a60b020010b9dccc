//! What a file is, by its first bytes rather than by what the caller declares (design §3:
//! 941501 is decided on the bytes). A leaf module: config names the allowed types with it, the
//! upload pipeline checks files with it.

/// Bytes the type check needs: enough for every signature below.
pub const HEAD_LEN: usize = 16;

/// Content types fxgate recognises by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// `image/jpeg`
    Jpeg,
    /// `image/png`
    Png,
    /// `image/gif`
    Gif,
    /// `image/bmp`
    Bmp,
}

impl ImageType {
    /// Parses a MIME name.
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime.trim().to_ascii_lowercase().as_str() {
            "image/jpeg" | "image/jpg" => Some(Self::Jpeg),
            "image/png" => Some(Self::Png),
            "image/gif" => Some(Self::Gif),
            "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => Some(Self::Bmp),
            _ => None,
        }
    }
    /// The canonical MIME name.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Bmp => "image/bmp",
        }
    }
    /// Recognises a type from a file's first bytes (at least 8 are needed for PNG).
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if head.starts_with(b"BM") && head.len() >= 6 {
            Some(Self::Bmp)
        } else {
            None
        }
    }
}

/// What a file that is none of the recognised images looks like, for the 941501 message.
pub fn describe_unknown(head: &[u8]) -> &'static str {
    if head.starts_with(b"%PDF") {
        "application/pdf"
    } else if head.starts_with(b"PK\x03\x04") {
        "application/zip"
    } else if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "text"
    } else {
        "an unrecognised binary format"
    }
}

/// The filename sent upstream when the caller gave none.
pub fn default_filename(sniffed: Option<ImageType>) -> &'static str {
    match sniffed {
        Some(ImageType::Jpeg) => "media.jpg",
        Some(ImageType::Png) => "media.png",
        Some(ImageType::Gif) => "media.gif",
        Some(ImageType::Bmp) => "media.bmp",
        None => "media.bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_images() {
        assert_eq!(
            ImageType::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageType::Jpeg)
        );
        assert_eq!(
            ImageType::sniff(b"\x89PNG\r\n\x1a\n...."),
            Some(ImageType::Png)
        );
        assert_eq!(ImageType::sniff(b"GIF89a.."), Some(ImageType::Gif));
        assert_eq!(ImageType::sniff(b"%PDF-1.7"), None);
        assert_eq!(describe_unknown(b"%PDF-1.7"), "application/pdf");
        assert_eq!(default_filename(Some(ImageType::Png)), "media.png");
    }
}
