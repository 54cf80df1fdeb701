//! Uploaded images made safe to serve: decoded (a file that only starts like an image is
//! refused), turned upright by their EXIF orientation, shrunk to fit a bound, and re-encoded in
//! their own format, which leaves every metadata block (EXIF with its GPS position, XMP,
//! comments) behind. GIFs are kept as they are: re-encoding would lose their frames, and they
//! carry no EXIF.

use crate::domain::error::{Error, ErrorKind, Result};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// The most memory one image may take to decode.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSettings {
    /// Images wider or taller are shrunk to fit.
    pub max_dimension: u32,
    pub jpeg_quality: u8,
}

/// The images Keel re-encodes, by detected type.
fn format_of(content_type: &str) -> Option<ImageFormat> {
    match content_type {
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

pub fn reencoded(content_type: &str) -> bool {
    format_of(content_type).is_some()
}

fn unreadable(content_type: &str, error: image::ImageError) -> Error {
    match error {
        image::ImageError::Limits(_) => Error::new(
            ErrorKind::ResourceExhausted,
            "IMAGE_TOO_LARGE",
            "the image has more pixels than Keel decodes",
        ),
        error => Error::invalid_argument(
            "UNSUPPORTED_FILE_TYPE",
            format!("the file starts like {content_type} but is not a valid image: {error}"),
        ),
    }
}

fn format(content_type: &str) -> Result<ImageFormat> {
    format_of(content_type)
        .ok_or_else(|| Error::internal(format!("{content_type} is not re-encoded")))
}

/// The decoded image, and the orientation its EXIF asks for.
fn decode(bytes: &[u8], content_type: &str) -> Result<(DynamicImage, Orientation)> {
    let failed = |error| unreadable(content_type, error);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format(content_type)?);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(failed)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(failed)?;
    Ok((image, orientation))
}

/// Encodes in the image's own format: JPEG at the configured quality, PNG and WebP losslessly.
/// Nothing but pixels is written.
fn encode(image: &DynamicImage, content_type: &str, settings: ImageSettings) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let written = match format(content_type)? {
        ImageFormat::Jpeg => {
            let encoder = JpegEncoder::new_with_quality(&mut out, settings.jpeg_quality);
            DynamicImage::ImageRgb8(image.to_rgb8()).write_with_encoder(encoder)
        }
        ImageFormat::Png => image.write_with_encoder(PngEncoder::new(&mut out)),
        _ => image.write_with_encoder(WebPEncoder::new_lossless(&mut out)),
    };
    written.map_err(|error| Error::internal(format!("encoding the image: {error}")))?;
    Ok(out)
}

/// Shrinks `image` to fit `width` × `height`, keeping its aspect ratio; never enlarges it.
fn fit(image: DynamicImage, (width, height): (u32, u32)) -> DynamicImage {
    if image.width() > width || image.height() > height {
        image.resize(width, height, FilterType::CatmullRom)
    } else {
        image
    }
}

/// The image's bytes, upright, within the bound, re-encoded without metadata. CPU-bound: run
/// it off the async threads.
pub fn reencode(bytes: &[u8], content_type: &str, settings: ImageSettings) -> Result<Vec<u8>> {
    let (mut image, orientation) = decode(bytes, content_type)?;
    image.apply_orientation(orientation);
    let bound = settings.max_dimension;
    encode(&fit(image, (bound, bound)), content_type, settings)
}

/// A thumbnail of a stored (already upright) image, fitted inside `size`.
pub fn thumbnail(
    bytes: &[u8],
    content_type: &str,
    size: (u32, u32),
    settings: ImageSettings,
) -> Result<Vec<u8>> {
    let (image, _) = decode(bytes, content_type)?;
    encode(&fit(image, size), content_type, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GenericImageView, Rgb, RgbImage};

    const SETTINGS: ImageSettings = ImageSettings {
        max_dimension: 100,
        jpeg_quality: 85,
    };

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| Rgb([x as u8, y as u8, 128]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg)
            .unwrap();
        out
    }

    /// An APP1 EXIF segment saying "rotate 90°", followed by a secret, after the JPEG's SOI.
    fn with_exif(jpeg: &[u8]) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0".to_vec();
        tiff.extend_from_slice(b"GPS 48.8584 N 2.2945 E");
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&tiff);
        let length = u16::try_from(payload.len() + 2).unwrap().to_be_bytes();
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1, length[0], length[1]]);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn images_come_out_upright_bounded_and_without_metadata() {
        let original = with_exif(&jpeg(300, 200));
        let out = reencode(&original, "image/jpeg", SETTINGS).unwrap();
        let decoded = image::load_from_memory(&out).unwrap();
        // Turned by the orientation (200 × 300), then shrunk to fit 100.
        assert_eq!(decoded.dimensions(), (67, 100));
        assert!(!out.windows(4).any(|window| window == b"Exif"));
        assert!(!out.windows(3).any(|window| window == b"GPS"));
        assert_eq!(infer::get(&out).unwrap().mime_type(), "image/jpeg");

        // Within the bound: the same size, still re-encoded.
        let small = reencode(&jpeg(50, 40), "image/jpeg", SETTINGS).unwrap();
        assert_eq!(
            image::load_from_memory(&small).unwrap().dimensions(),
            (50, 40)
        );

        // What only starts like an image is refused.
        let mut fake = jpeg(50, 40)[..30].to_vec();
        fake.extend_from_slice(&[7; 100]);
        let error = reencode(&fake, "image/jpeg", SETTINGS).unwrap_err();
        assert_eq!(error.reason, "UNSUPPORTED_FILE_TYPE");
    }
}
