//! MP4 demuxing and H.264 decoding (OpenH264) of source clips.

use super::*;
use std::fs::File;
use std::io::{self, BufReader, Seek};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use mp4::{MediaType, Mp4Reader, Mp4Track, TrackType};
use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;

// --- MP4 / H.264 ------------------------------------------------------------------------------

pub(super) fn read_mp4(path: &Path, sampling: Sampling) -> Result<Clip> {
    // The mp4 crate panics on some malformed files (unchecked unwraps in its sample tables);
    // a bad input file must give an error, not abort the program.
    panic::catch_unwind(AssertUnwindSafe(|| read_mp4_unguarded(path, sampling))).unwrap_or_else(
        |payload| {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(corrupt(
                path,
                format!("the MP4 structure is invalid ({detail})"),
            ))
        },
    )
}

pub(super) fn read_mp4_unguarded(path: &Path, sampling: Sampling) -> Result<Clip> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut file = BufReader::new(file);
    check_boxes(&mut file, 0, size, true)
        .map_err(|reason| corrupt(path, format!("the MP4 structure is invalid: {reason}")))?;
    file.seek(io::SeekFrom::Start(0))
        .map_err(|e| io_error(path, e))?;
    let mut reader = Mp4Reader::read_header(file, size)
        .map_err(|e| corrupt(path, format!("not a readable MP4 file: {e}")))?;
    let track = H264Track::find(path, &reader)?;
    check_length(path, sampling, track.sample_count as usize)?;
    let mut decoder = start_decoder(path, &track)?;
    let mut picker = FramePicker::new(path, sampling);
    let mut shown = 0;
    let mut packet = Vec::new();
    for sample_id in 1..=track.sample_count {
        if picker.is_done() {
            break;
        }
        read_sample_annex_b(path, &mut reader, &track, sample_id, &mut packet)?;
        let picture = decoder.decode(&packet).map_err(|e| {
            corrupt(
                path,
                format!("H.264 sample {sample_id}: {}", decode_error(&e)),
            )
        })?;
        if let Some(yuv) = picture {
            offer_picture(&mut picker, shown, &yuv)?;
            shown += 1;
        }
    }
    // Pictures held back for reordering (B-frames) only come out when flushed.
    if !picker.is_done() {
        let remaining = decoder.flush_remaining().map_err(|e| {
            corrupt(
                path,
                format!("end of the H.264 stream: {}", decode_error(&e)),
            )
        })?;
        for yuv in &remaining {
            offer_picture(&mut picker, shown, yuv)?;
            shown += 1;
        }
    }
    picker.finish(shown, track.fps)
}

/// Boxes whose content is more boxes (the ones the mp4 crate walks).
const CONTAINER_BOXES: [&[u8; 4]; 12] = [
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"udta", b"mvex", b"moof", b"traf",
    b"edts", b"ilst",
];

/// Walks the box tree from `start` to `end` (headers only) and refuses a box that is smaller
/// than its header or runs past its parent: the mp4 crate loops forever on a zero-sized box
/// inside a container (it seeks back to the same header), found by fuzzing.
fn check_boxes<R: io::Read + io::Seek>(
    reader: &mut R,
    start: u64,
    end: u64,
    top_level: bool,
) -> std::result::Result<(), String> {
    use io::SeekFrom;
    let mut at = start;
    while at < end {
        if end - at < 8 {
            return Err(format!("{} stray bytes at offset {at}", end - at));
        }
        reader
            .seek(SeekFrom::Start(at))
            .map_err(|e| e.to_string())?;
        let mut header = [0u8; 8];
        reader.read_exact(&mut header).map_err(|e| e.to_string())?;
        let name: [u8; 4] = header[4..].try_into().expect("4 bytes");
        let shown = String::from_utf8_lossy(&name).escape_debug().to_string();
        let (size, header_len) = match u32::from_be_bytes(header[..4].try_into().expect("4")) {
            // A top-level box of size 0 runs to the end of the file.
            0 if top_level => (end - at, 8),
            1 => {
                let mut large = [0u8; 8];
                reader.read_exact(&mut large).map_err(|e| e.to_string())?;
                (u64::from_be_bytes(large), 16)
            }
            n => (u64::from(n), 8),
        };
        if size < header_len {
            return Err(format!(
                "box `{shown}` at offset {at} has size {size}, smaller than its header"
            ));
        }
        let box_end = at
            .checked_add(size)
            .filter(|&e| e <= end)
            .ok_or_else(|| format!("box `{shown}` at offset {at} runs past its parent"))?;
        let content = at + header_len;
        if CONTAINER_BOXES.contains(&&name) {
            check_boxes(reader, content, box_end, false)?;
        } else if &name == b"meta" && box_end - content >= 4 {
            // A full box: version and flags, then boxes (some writers omit the four bytes).
            let mut version = [0u8; 4];
            reader.read_exact(&mut version).map_err(|e| e.to_string())?;
            let children = if version == [0; 4] {
                content + 4
            } else {
                content
            };
            check_boxes(reader, children, box_end, false)?;
        }
        at = box_end;
    }
    Ok(())
}

/// An OpenH264 decoder primed with the track's SPS/PPS. Flushing is left to the end of the
/// stream: flushing after every packet (the crate's default) emits B-frame streams out of
/// order and makes OpenH264 report errors.
pub(super) fn start_decoder(path: &Path, track: &H264Track) -> Result<Decoder> {
    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| corrupt(path, format!("could not start the H.264 decoder: {e}")))?;
    decoder
        .decode(&track.parameter_sets)
        .map_err(|e| corrupt(path, format!("invalid H.264 SPS/PPS: {}", decode_error(&e))))?;
    Ok(decoder)
}

/// Reads sample `sample_id` (1-based) of the track into `packet` as Annex B.
pub(super) fn read_sample_annex_b<R: io::Read + io::Seek>(
    path: &Path,
    reader: &mut Mp4Reader<R>,
    track: &H264Track,
    sample_id: u32,
    packet: &mut Vec<u8>,
) -> Result<()> {
    let sample = reader
        .read_sample(track.id, sample_id)
        .map_err(|e| corrupt(path, format!("cannot read video sample {sample_id}: {e}")))?
        .ok_or_else(|| corrupt(path, format!("video sample {sample_id} is missing")))?;
    avcc_to_annex_b(&sample.bytes, track.length_size, packet)
        .map_err(|e| corrupt(path, format!("video sample {sample_id}: {e}")))
}

/// Converts a decoded picture to RGB if the sampling wants it (conversion is the costly part,
/// so skipped pictures are never converted).
pub(super) fn offer_picture(
    picker: &mut FramePicker<'_>,
    index: usize,
    yuv: &DecodedYUV<'_>,
) -> Result<()> {
    if !picker.wants(index) {
        return Ok(());
    }
    let (width, height) = yuv.dimensions();
    let mut rgb = vec![0; width * height * 3];
    yuv.write_rgb8(&mut rgb);
    picker.keep(index, width as u32, height as u32, rgb)
}

/// What the decoder needs to know about the H.264 track of an MP4.
pub(super) struct H264Track {
    id: u32,
    sample_count: u32,
    fps: f32,
    /// Bytes per NAL length prefix in the samples (from avcC).
    length_size: usize,
    /// Every SPS and PPS from avcC, as Annex B, to prime the decoder.
    parameter_sets: Vec<u8>,
}

impl H264Track {
    /// Picks the first video track (lowest id) and checks it is H.264.
    fn find<R: io::Read + io::Seek>(path: &Path, reader: &Mp4Reader<R>) -> Result<Self> {
        let track = reader
            .tracks()
            .values()
            .filter(|t| matches!(t.track_type(), Ok(TrackType::Video)))
            .min_by_key(|t| t.track_id())
            .ok_or_else(|| VideoError::NoVideoTrack {
                path: path.to_path_buf(),
            })?;
        match track.media_type() {
            Ok(MediaType::H264) => {}
            Ok(other) => {
                return Err(unsupported(
                    path,
                    format!("video codec {other} (only H.264 is supported)"),
                ));
            }
            Err(_) => {
                return Err(unsupported(
                    path,
                    "the video codec is not H.264 (only H.264 is supported)",
                ));
            }
        }
        let Some(avc1) = track.trak.mdia.minf.stbl.stsd.avc1.as_ref() else {
            return Err(corrupt(path, "the H.264 track has no avc1 sample entry"));
        };
        let avcc = &avc1.avcc;
        let mut parameter_sets = Vec::new();
        for nal in avcc
            .sequence_parameter_sets
            .iter()
            .chain(&avcc.picture_parameter_sets)
        {
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(&nal.bytes);
        }
        if parameter_sets.is_empty() {
            return Err(corrupt(path, "the avcC box holds no SPS/PPS"));
        }
        check_sample_timing(path, track)?;
        Ok(Self {
            id: track.track_id(),
            sample_count: track.sample_count(),
            fps: track_fps(track),
            length_size: usize::from(avcc.length_size_minus_one & 0x3) + 1,
            parameter_sets,
        })
    }
}

/// The mp4 crate panics when reading a sample that its time table (stts) does not cover, so
/// such files are rejected up front with a proper error.
pub(super) fn check_sample_timing(path: &Path, track: &Mp4Track) -> Result<()> {
    if !track.trafs.is_empty() {
        return Ok(()); // Fragmented files time samples per fragment instead.
    }
    let stts = &track.trak.mdia.minf.stbl.stts;
    let timed: u64 = stts.entries.iter().map(|e| u64::from(e.sample_count)).sum();
    let count = track.sample_count();
    if timed < u64::from(count) {
        return Err(corrupt(
            path,
            format!("the stts box gives times for {timed} of {count} video samples"),
        ));
    }
    Ok(())
}

/// Frames per second from the media header: samples / (duration / timescale). Values no
/// real video has (a corrupt header) fall back to the default rather than poisoning output
/// timing.
pub(super) fn track_fps(track: &Mp4Track) -> f32 {
    let mdhd = &track.trak.mdia.mdhd;
    let count = f64::from(track.sample_count());
    if mdhd.duration == 0 || mdhd.timescale == 0 || count == 0.0 {
        return DEFAULT_FPS;
    }
    let fps = count * f64::from(mdhd.timescale) / mdhd.duration as f64;
    if (0.1..=1000.0).contains(&fps) {
        fps as f32
    } else {
        DEFAULT_FPS
    }
}

/// Describes an OpenH264 decoding failure by name: the crate's own message is only the raw
/// status bit set ("Native:4"), which means nothing to a user.
pub(super) fn decode_error(error: &openh264::Error) -> String {
    const STATUS_BITS: [(i64, &str); 10] = [
        (0x02, "reference frame lost"),
        (0x04, "bitstream error"),
        (0x08, "dependent layer lost"),
        (0x10, "missing SPS/PPS"),
        (0x20, "error concealed"),
        (0x40, "broken reference list"),
        (0x1000, "invalid argument"),
        (0x2000, "decoder not initialised"),
        (0x4000, "out of memory"),
        (0x8000, "output buffer too small"),
    ];
    let code = error.native_code();
    let names: Vec<&str> = STATUS_BITS
        .iter()
        .filter(|(bit, _)| code & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        error.to_string()
    } else {
        format!("{} (OpenH264 status {code:#x})", names.join(", "))
    }
}

/// Rewrites an MP4 sample (NAL units each prefixed by a big-endian length of `length_size`
/// bytes) as an Annex B byte stream (each NAL prefixed by `00 00 00 01`), which is what
/// OpenH264 parses.
pub(super) fn avcc_to_annex_b(
    sample: &[u8],
    length_size: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    out.clear();
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err(format!("truncated NAL length ({} bytes left)", rest.len()));
        }
        let (prefix, tail) = rest.split_at(length_size);
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len > tail.len() {
            return Err(format!(
                "NAL unit of {len} bytes overruns the sample ({} bytes left)",
                tail.len()
            ));
        }
        let (nal, tail) = tail.split_at(len);
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        rest = tail;
    }
    Ok(())
}
