//! H.264 encoding (OpenH264) and MP4 muxing of written videos.

use super::*;
use std::borrow::Cow;
use std::io::{Cursor, Write};
use std::path::Path;

use mp4::{
    AvcConfig, MediaConfig, Mp4Config, Mp4Reader, Mp4Sample, Mp4Writer, TrackConfig, TrackType,
    WriteBox,
};
use openh264::OpenH264API;
use openh264::encoder::{
    Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};

// --- MP4 / H.264 ------------------------------------------------------------------------------

/// Writes H.264 (OpenH264, constrained baseline, BT.601 limited range signalled in the VUI)
/// in an MP4 container, atomically. Every frame becomes one sample with constant duration;
/// keyframes are marked as sync samples. H.264 4:2:0 needs even sizes, so an odd width or
/// height is padded by one pixel (repeating the last column/row): the file is then 1 pixel
/// larger than the clip.
pub fn write_mp4(path: &Path, clip: &Clip) -> Result<()> {
    validate_frames(path, clip)?;
    validate_fps(path, clip)?;
    let stream = encode_h264(path, clip)?;
    let bytes = mux_mp4(&stream, clip.fps).map_err(|e| encode_error(path, e))?;
    write_atomically(path, |out| {
        out.write_all(&bytes).map_err(|e| io_error(path, e))
    })
}

/// An encoded clip, ready to be put in a container.
pub(super) struct H264Stream {
    width: u32,
    height: u32,
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// One access unit per frame, NAL units in AVCC form (4-byte big-endian length prefix),
    /// and whether it is a keyframe.
    samples: Vec<(Vec<u8>, bool)>,
}

pub(super) fn encode_h264(path: &Path, clip: &Clip) -> Result<H264Stream> {
    let width = clip.width + clip.width % 2;
    let height = clip.height + clip.height % 2;
    check_h264_size(path, clip)?;
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config(clip))
        .map_err(|e| encode_error(path, format!("could not start the H.264 encoder: {e}")))?;
    let mut stream = H264Stream {
        width,
        height,
        sps: Vec::new(),
        pps: Vec::new(),
        samples: Vec::with_capacity(clip.frames.len()),
    };
    for (i, frame) in clip.frames.iter().enumerate() {
        let padded = pad_to_even(frame, clip.width, clip.height);
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(
            &padded,
            (width as usize, height as usize),
        ));
        let encoded = encoder
            .encode(&yuv)
            .map_err(|e| encode_error(path, format!("H.264 encoding failed at frame {i}: {e}")))?;
        let keyframe = encoded.frame_type() == FrameType::IDR;
        let mut sample = Vec::new();
        for layer in (0..encoded.num_layers()).filter_map(|l| encoded.layer(l)) {
            for nal in (0..layer.nal_count()).filter_map(|n| layer.nal_unit(n)) {
                stream.add_nal(strip_start_code(nal), &mut sample);
            }
        }
        if sample.is_empty() {
            return Err(encode_error(
                path,
                format!("the H.264 encoder produced no picture for frame {i}"),
            ));
        }
        stream.samples.push((sample, keyframe));
    }
    if stream.sps.len() < 4 || stream.pps.is_empty() {
        return Err(encode_error(path, "the H.264 encoder produced no SPS/PPS"));
    }
    Ok(stream)
}

impl H264Stream {
    /// Routes one NAL unit: parameter sets go to the avcC box (MP4 "avc1" keeps them out of
    /// the samples), delimiters are dropped, everything else is appended to the sample.
    fn add_nal(&mut self, nal: &[u8], sample: &mut Vec<u8>) {
        const SPS: u8 = 7;
        const PPS: u8 = 8;
        const ACCESS_UNIT_DELIMITER: u8 = 9;
        let Some(&header) = nal.first() else { return };
        match header & 0x1f {
            SPS => {
                if self.sps.is_empty() {
                    self.sps = nal.to_vec();
                }
            }
            PPS => {
                if self.pps.is_empty() {
                    self.pps = nal.to_vec();
                }
            }
            ACCESS_UNIT_DELIMITER => {}
            _ => {
                // NAL units are far below 4 GiB; the encoder caps them at frame size.
                sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                sample.extend_from_slice(nal);
            }
        }
    }
}

/// OpenH264 encodes pictures from 16x16 up to 3840x2160 (either orientation); anything else
/// is refused here with a clear message instead of an opaque encoder status code.
pub(super) fn check_h264_size(path: &Path, clip: &Clip) -> Result<()> {
    let (width, height) = (clip.width + clip.width % 2, clip.height + clip.height % 2);
    let (long, short) = (width.max(height), width.min(height));
    if short < 16 || long > 3840 || short > 2160 {
        return Err(invalid(
            path,
            format!(
                "H.264 output must be between 16x16 and 3840x2160 pixels, but the clip is \
                 {}x{}; resize it first",
                clip.width, clip.height
            ),
        ));
    }
    Ok(())
}

/// Encoder settings: never skip frames (every frame must become a sample); constant quality
/// (rate control off, OpenH264's fixed QP 26: clean pictures for short clips, size follows
/// content, and no rate-control warnings on stderr); regular keyframes; and colour signalling
/// matching OpenH264's BT.601 limited-range RGB conversion so players show the right colours.
pub(super) fn encoder_config(clip: &Clip) -> EncoderConfig {
    let keyframe_interval = (clip.fps * KEYFRAME_SECONDS).round().max(1.0) as u32;
    EncoderConfig::new()
        .skip_frames(false)
        .rate_control_mode(RateControlMode::Off)
        .max_frame_rate(FrameRate::from_hz(clip.fps))
        .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_interval))
        .vui(VuiConfig::bt601())
}

/// Pads an odd-sized frame to even width and height by repeating its last column and row.
pub(super) fn pad_to_even(frame: &[u8], width: u32, height: u32) -> Cow<'_, [u8]> {
    if width.is_multiple_of(2) && height.is_multiple_of(2) {
        return Cow::Borrowed(frame);
    }
    let (w, h) = (width as usize, height as usize);
    let row = w * 3;
    let padded_row = (w + w % 2) * 3;
    let mut out = Vec::with_capacity(padded_row * (h + h % 2));
    for line in frame.chunks_exact(row) {
        out.extend_from_slice(line);
        if w % 2 == 1 {
            out.extend_from_slice(&line[row - 3..]);
        }
    }
    if h % 2 == 1 {
        let last = out.len() - padded_row;
        out.extend_from_within(last..);
    }
    Cow::Owned(out)
}

/// Removes an Annex B start code (`00 00 01` or `00 00 00 01`) from an encoder NAL unit.
pub(super) fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nal.strip_prefix(&[0, 0, 1]))
        .unwrap_or(nal)
}

/// Builds the MP4 file in memory with the mp4 crate's writer, then fixes the header flags it
/// leaves at values some players reject.
pub(super) fn mux_mp4(stream: &H264Stream, fps: f32) -> std::result::Result<Vec<u8>, String> {
    let (Ok(width), Ok(height)) = (u16::try_from(stream.width), u16::try_from(stream.height))
    else {
        return Err(format!(
            "{}x{} is too large for MP4",
            stream.width, stream.height
        ));
    };
    let sample_duration = (f64::from(MP4_TIMESCALE) / f64::from(fps)).round().max(1.0) as u32;
    let config = Mp4Config {
        major_brand: (*b"isom").into(),
        minor_version: 512,
        compatible_brands: [b"isom", b"iso2", b"avc1", b"mp41"]
            .into_iter()
            .map(|b| (*b).into())
            .collect(),
        timescale: 1000,
    };
    let track = TrackConfig {
        track_type: TrackType::Video,
        timescale: MP4_TIMESCALE,
        language: "und".to_string(),
        media_conf: MediaConfig::AvcConfig(AvcConfig {
            width,
            height,
            seq_param_set: stream.sps.clone(),
            pic_param_set: stream.pps.clone(),
        }),
    };
    let mut writer =
        Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(|e| e.to_string())?;
    writer.add_track(&track).map_err(|e| e.to_string())?;
    for (i, (bytes, keyframe)) in stream.samples.iter().enumerate() {
        let sample = Mp4Sample {
            start_time: i as u64 * u64::from(sample_duration),
            duration: sample_duration,
            rendering_offset: 0,
            is_sync: *keyframe,
            bytes: mp4::Bytes::copy_from_slice(bytes),
        };
        writer.write_sample(1, &sample).map_err(|e| e.to_string())?;
    }
    writer.write_end().map_err(|e| e.to_string())?;
    let mut bytes = writer.into_writer().into_inner();
    fix_moov_for_players(&mut bytes)?;
    Ok(bytes)
}

/// The mp4 crate writes `tkhd` without the "in movie" flag, `vmhd` with flags 0 (ISO 14496-12
/// requires 1; Android's player refuses otherwise) and `mvhd.next_track_id` 1 although track 1
/// exists. Re-reads the finished file's `moov` (the last box), corrects these, and writes it
/// back in place; sample offsets point into `mdat`, which comes before, so they stay valid.
pub(super) fn fix_moov_for_players(bytes: &mut Vec<u8>) -> std::result::Result<(), String> {
    const TRACK_ENABLED_IN_MOVIE: u32 = 0x1 | 0x2;
    let reader = Mp4Reader::read_header(Cursor::new(bytes.as_slice()), bytes.len() as u64)
        .map_err(|e| format!("cannot re-read the written MP4: {e}"))?;
    let mut moov = reader.moov;
    let moov_start =
        top_level_box_offset(bytes, b"moov").ok_or("the written MP4 has no moov box")?;
    moov.mvhd.next_track_id = moov.traks.len() as u32 + 1;
    for trak in &mut moov.traks {
        trak.tkhd.flags = TRACK_ENABLED_IN_MOVIE;
        if let Some(vmhd) = trak.mdia.minf.vmhd.as_mut() {
            vmhd.flags = 1;
        }
    }
    bytes.truncate(moov_start);
    moov.write_box(&mut *bytes)
        .map_err(|e| format!("cannot rewrite the moov box: {e}"))?;
    Ok(())
}

/// Byte offset of the first top-level box of the given type, walking the box headers
/// (32-bit sizes, 64-bit "largesize" when the size field is 1).
pub(super) fn top_level_box_offset(bytes: &[u8], kind: &[u8; 4]) -> Option<usize> {
    let mut at = 0usize;
    while at.checked_add(8)? <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().ok()?);
        if &bytes[at + 4..at + 8] == kind {
            return Some(at);
        }
        let size = match size32 {
            0 => return None,
            1 => usize::try_from(u64::from_be_bytes(
                bytes.get(at + 8..at + 16)?.try_into().ok()?,
            ))
            .ok()?,
            n => n as usize,
        };
        if size < 8 {
            return None;
        }
        at = at.checked_add(size)?;
    }
    None
}
