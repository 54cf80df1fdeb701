//! Object stores behind `domain::files::ObjectStore`: a directory on local disk (the embedded
//! default) or an S3 bucket.

mod local;
mod s3;

pub use local::LocalObjects;
pub use s3::{S3Objects, S3Settings};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// `Content-Disposition` with the original name: an ASCII fallback and the UTF-8 form
/// (RFC 6266), neither able to break out of the header.
pub fn content_disposition(inline: bool, filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        utf8_percent_encode(filename, NON_ALPHANUMERIC)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_keep_names_inside_the_header() {
        assert_eq!(
            content_disposition(false, "résumé \"final\".pdf"),
            "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22%2Epdf"
        );
    }
}
