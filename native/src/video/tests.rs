//! The video readers and writers on the reference's sample clips and synthetic ones.

use std::io::{BufReader, Cursor};

use mp4::{MediaConfig, Mp4Config, Mp4Reader, Mp4Sample, Mp4Writer, TrackConfig, TrackType};

use super::layout::centered_crop;
use super::*;

fn shared_video(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/videos")
        .join(name)
}

/// A fresh, empty directory under the system temp dir, one per test (tests run in
/// parallel), removed again when the test ends, pass or fail.
struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("tav-video-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    ScratchDir(dir)
}

fn sampling(start: usize, stride: usize, count: usize) -> Sampling {
    Sampling {
        start,
        stride,
        count,
    }
}

/// Smooth moving colour waves: easy for codecs, so round-trip errors stay small.
fn synthetic_clip(width: u32, height: u32, frames: usize) -> Clip {
    let frames = (0..frames)
        .map(|t| {
            let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
            for y in 0..height {
                for x in 0..width {
                    let (xf, yf, tf) = (x as f32, y as f32, t as f32);
                    rgb.push((128.0 + 90.0 * ((xf + 3.0 * tf) / 14.0).sin()) as u8);
                    rgb.push((128.0 + 90.0 * ((yf + 2.0 * tf) / 17.0).cos()) as u8);
                    rgb.push((128.0 + 90.0 * ((xf + yf - 2.0 * tf) / 23.0).sin()) as u8);
                }
            }
            rgb
        })
        .collect();
    Clip {
        width,
        height,
        fps: 10.0,
        frames,
    }
}

fn variance(frame: &[u8]) -> f64 {
    let n = frame.len() as f64;
    let mean = frame.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    frame
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f64 / a.len() as f64
}

fn no_partial_files(dir: &Path) -> bool {
    fs::read_dir(dir).expect("read scratch dir").all(|e| {
        !e.expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")
    })
}

#[test]
fn car_turn_decodes_sampled_frames() {
    let clip = read_clip(&shared_video("car-turn.mp4"), sampling(0, 2, 24)).expect("decode");
    assert_eq!((clip.width, clip.height), (480, 480));
    assert_eq!(clip.frames.len(), 24);
    assert!(
        (clip.fps - 5.0).abs() < 0.1,
        "fps {} (10 fps source, stride 2)",
        clip.fps
    );
    for (i, frame) in clip.frames.iter().enumerate() {
        assert_eq!(frame.len(), 480 * 480 * 3);
        assert!(variance(frame) > 100.0, "frame {i} looks blank");
    }
    for (i, pair) in clip.frames.windows(2).enumerate() {
        let diff = mean_abs_diff(&pair[0], &pair[1]);
        assert!(diff > 0.5, "frames {i} and {} are identical", i + 1);
    }
}

/// Decoding is in display order: with B-frames, a wrong order would make some frame
/// differ more from its neighbour than from the frame two steps away.
#[test]
fn car_turn_frames_are_in_display_order() {
    let clip = read_clip(&shared_video("car-turn.mp4"), sampling(0, 1, 80)).expect("decode");
    assert_eq!(clip.frames.len(), 80);
    let f = &clip.frames;
    for i in 0..f.len() - 2 {
        let next = mean_abs_diff(&f[i], &f[i + 1]);
        let skip = mean_abs_diff(&f[i], &f[i + 2]);
        assert!(
            next <= skip * 1.05,
            "frame order suspicious at {i}: {next} vs {skip}"
        );
    }
}

/// man-skiing and rabbit-watermelon carry AAC audio; 718 is not a multiple of 16, so the
/// decoder must apply the SPS cropping.
#[test]
fn clips_with_audio_and_cropped_sizes_decode() {
    let clip = read_clip(&shared_video("man-skiing.mp4"), sampling(10, 3, 8)).expect("decode");
    assert_eq!((clip.width, clip.height, clip.frames.len()), (718, 718, 8));
    assert!(clip.frames.iter().all(|f| variance(f) > 100.0));
    assert!((clip.fps - 29.97 / 3.0).abs() < 0.01, "fps {}", clip.fps);
    let clip = read_clip(&shared_video("man-surfing.mp4"), sampling(0, 1, 72)).expect("decode");
    assert_eq!((clip.width, clip.height, clip.frames.len()), (656, 656, 72));
    let clip =
        read_clip(&shared_video("rabbit-watermelon.mp4"), sampling(150, 4, 9)).expect("decode");
    assert_eq!((clip.width, clip.height, clip.frames.len()), (718, 718, 9));
}

#[test]
fn too_short_names_the_frame_count() {
    let path = shared_video("car-turn.mp4");
    let Err(err) = read_clip(&path, sampling(20, 3, 24)) else {
        panic!("80 frames cannot give 24 at stride 3 from 20");
    };
    assert!(
        matches!(err, VideoError::TooShort { available: 80, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("too short"), "{message}");
    assert!(message.contains("80 frames"), "{message}");
    assert!(message.contains("car-turn.mp4"), "{message}");
}

#[test]
fn missing_and_garbage_files_name_the_path() {
    let dir = scratch_dir("bad-inputs");
    let missing = dir.join("nope.mp4");
    let err = read_clip(&missing, sampling(0, 1, 1)).expect_err("missing file");
    assert!(matches!(err, VideoError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.mp4"));

    let garbage = dir.join("x.mp4");
    // A fixed xorshift sequence: random-looking bytes, same every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(&garbage, bytes).expect("write garbage");
    let err = read_clip(&garbage, sampling(0, 1, 1)).expect_err("garbage file");
    assert!(matches!(err, VideoError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("x.mp4"), "{err}");

    let text = dir.join("notes.txt");
    fs::write(&text, "hello").expect("write text");
    let err = read_clip(&text, sampling(0, 1, 1)).expect_err("text file");
    assert!(matches!(err, VideoError::Unsupported { .. }), "{err:?}");

    let err = read_clip(&garbage, sampling(0, 0, 1)).expect_err("zero stride");
    assert!(matches!(err, VideoError::InvalidInput { .. }), "{err:?}");
}

#[test]
fn broken_and_audio_only_mp4s_are_rejected() {
    let dir = scratch_dir("broken-mp4");
    let source = fs::read(shared_video("car-turn.mp4")).expect("read car-turn");

    let truncated = dir.join("truncated.mp4");
    fs::write(&truncated, &source[..source.len() / 2]).expect("write truncated");
    let Err(err) = read_clip(&truncated, sampling(0, 1, 80)) else {
        panic!("a truncated file must not decode");
    };
    assert!(matches!(err, VideoError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated.mp4"), "{err}");

    // Overwrite part of the first (key)frame's slice data.
    let mut damaged = source.clone();
    let mdat = source.windows(4).position(|w| w == b"mdat").expect("mdat");
    damaged[mdat + 2000..mdat + 2600].fill(0xff);
    let damaged_path = dir.join("damaged.mp4");
    fs::write(&damaged_path, damaged).expect("write damaged");
    let Err(err) = read_clip(&damaged_path, sampling(0, 1, 4)) else {
        panic!("a damaged bitstream must not decode");
    };
    assert!(matches!(err, VideoError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("H.264 sample 1"), "{err}");

    let audio = dir.join("audio.mp4");
    fs::write(&audio, audio_only_mp4()).expect("write audio-only");
    let Err(err) = read_clip(&audio, sampling(0, 1, 1)) else {
        panic!("an audio-only file has no frames");
    };
    assert!(matches!(err, VideoError::NoVideoTrack { .. }), "{err:?}");
    assert!(err.to_string().contains("no video track"), "{err}");
}

/// A valid MP4 holding one AAC track and no video.
fn audio_only_mp4() -> Vec<u8> {
    let config = Mp4Config {
        major_brand: (*b"isom").into(),
        minor_version: 512,
        compatible_brands: vec![(*b"isom").into()],
        timescale: 1000,
    };
    let track = TrackConfig {
        track_type: TrackType::Audio,
        timescale: 44_100,
        language: "und".to_string(),
        media_conf: MediaConfig::AacConfig(mp4::AacConfig::default()),
    };
    let sample = Mp4Sample {
        start_time: 0,
        duration: 1024,
        rendering_offset: 0,
        is_sync: true,
        bytes: mp4::Bytes::from_static(&[0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c]),
    };
    let mut writer = Mp4Writer::write_start(Cursor::new(Vec::new()), &config).expect("start mp4");
    writer.add_track(&track).expect("add track");
    writer.write_sample(1, &sample).expect("write sample");
    writer.write_end().expect("finish mp4");
    writer.into_writer().into_inner()
}

#[test]
fn mp4_round_trip_is_close() {
    let dir = scratch_dir("mp4-round-trip");
    let path = dir.join("nested/out.mp4");
    let clip = synthetic_clip(96, 64, 12);
    write_mp4(&path, &clip).expect("write mp4");
    assert!(no_partial_files(path.parent().expect("parent")));

    let back = read_clip(&path, sampling(0, 1, 12)).expect("read back");
    assert_eq!((back.width, back.height, back.frames.len()), (96, 64, 12));
    assert!((back.fps - 10.0).abs() < 0.01, "fps {}", back.fps);
    for (i, (a, b)) in clip.frames.iter().zip(&back.frames).enumerate() {
        let err = mean_abs_diff(a, b);
        assert!(err < 12.0, "frame {i}: mean abs error {err}");
    }
}

#[test]
fn mp4_writer_pads_odd_sizes_and_marks_keyframes() {
    let dir = scratch_dir("mp4-odd");
    let path = dir.join("odd.mp4");
    write_mp4(&path, &synthetic_clip(63, 47, 25)).expect("write mp4");
    let back = read_clip(&path, sampling(0, 1, 25)).expect("read back");
    assert_eq!((back.width, back.height), (64, 48));

    let file = File::open(&path).expect("open");
    let size = file.metadata().expect("metadata").len();
    let reader = Mp4Reader::read_header(BufReader::new(file), size).expect("parse");
    let track = reader.tracks().get(&1).expect("track 1");
    assert_eq!(
        track.trak.tkhd.flags & 0x3,
        0x3,
        "track enabled and in movie"
    );
    assert_eq!(track.trak.mdia.minf.vmhd.as_ref().map(|v| v.flags), Some(1));
    assert_eq!(reader.moov.mvhd.next_track_id, 2);
    let stss = track.trak.mdia.minf.stbl.stss.as_ref().expect("stss");
    // 10 fps with a keyframe every 2 seconds: samples 1 and 21 are sync samples.
    assert_eq!(stss.entries, vec![1, 21]);
    // Constant frame duration: 10 fps in a 90 kHz timescale.
    assert_eq!(track.timescale(), MP4_TIMESCALE);
    let stts = &track.trak.mdia.minf.stbl.stts.entries;
    assert_eq!(stts.len(), 1);
    assert_eq!((stts[0].sample_count, stts[0].sample_delta), (25, 9000));

    let tiny = dir.join("tiny.mp4");
    let err = write_mp4(&tiny, &synthetic_clip(8, 8, 2)).expect_err("below H.264's minimum");
    assert!(matches!(err, VideoError::InvalidInput { .. }), "{err:?}");
    assert!(!tiny.exists());
    assert!(no_partial_files(&dir));
}

#[test]
fn gif_round_trip() {
    let dir = scratch_dir("gif-round-trip");
    let path = dir.join("out.gif");
    let clip = synthetic_clip(40, 30, 6);
    write_gif(&path, &clip).expect("write gif");
    assert!(no_partial_files(&dir));
    let back = read_clip(&path, sampling(0, 1, 6)).expect("read back");
    assert_eq!((back.width, back.height, back.frames.len()), (40, 30, 6));
    assert!((back.fps - 10.0).abs() < 0.01, "fps {}", back.fps);
    for (i, (a, b)) in clip.frames.iter().zip(&back.frames).enumerate() {
        let err = mean_abs_diff(a, b);
        assert!(err < 10.0, "frame {i}: mean abs error {err}");
    }
    let err = read_clip(&path, sampling(2, 2, 3)).expect_err("6 frames cannot give 3 at 2,4,6");
    assert!(err.to_string().contains("has 6 frames"), "{err}");
}

#[test]
fn png_folder_round_trip() {
    let dir = scratch_dir("png-frames");
    let frames_dir = dir.join("frames");
    write_png_frames(&frames_dir, &synthetic_clip(20, 10, 12)).expect("write 12");
    let clip = synthetic_clip(20, 10, 5);
    write_png_frames(&frames_dir, &clip).expect("write 5 over 12");
    assert!(no_partial_files(&frames_dir));
    assert!(frames_dir.join("frame_0004.png").is_file());
    assert!(
        !frames_dir.join("frame_0005.png").exists(),
        "stale frames removed"
    );

    let back = read_clip(&frames_dir, sampling(1, 2, 2)).expect("read back");
    assert_eq!((back.width, back.height, back.frames.len()), (20, 10, 2));
    assert_eq!(back.frames[0], clip.frames[1], "PNG is lossless");
    assert_eq!(back.frames[1], clip.frames[3]);
}

#[test]
fn write_png_is_atomic_and_checks_sizes() {
    let dir = scratch_dir("png-single");
    let path = dir.join("one.png");
    let err = write_png(&path, 4, 4, &[0; 10]).expect_err("wrong buffer size");
    assert!(matches!(err, VideoError::InvalidInput { .. }), "{err:?}");
    assert!(!path.exists());
    write_png(&path, 2, 1, &[255, 0, 0, 0, 0, 255]).expect("write");
    write_png(&path, 1, 2, &[1, 2, 3, 4, 5, 6]).expect("overwrite");
    assert!(no_partial_files(&dir));
    let image = read_image(&path).expect("read");
    assert_eq!(image.dimensions(), (1, 2));
    assert_eq!(image.into_raw(), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn resize_with_and_without_crop() {
    let clip = synthetic_clip(64, 32, 3);
    let stretched = resize(&clip, 16, 16, false);
    assert_eq!((stretched.width, stretched.height), (16, 16));
    assert!(stretched.frames.iter().all(|f| f.len() == 16 * 16 * 3));
    let cropped = resize(&clip, 16, 16, true);
    assert_eq!(
        (cropped.width, cropped.height, cropped.frames.len()),
        (16, 16, 3)
    );
    assert_ne!(stretched.frames[0], cropped.frames[0]);
    assert_eq!(centered_crop(64, 32, 16, 16), (16, 0, 32, 32));
    assert_eq!(centered_crop(30, 90, 10, 20), (0, 15, 30, 60));
    // A same-size crop-free resize is the identity.
    assert_eq!(resize(&clip, 64, 32, true).frames, clip.frames);
}

#[test]
fn grid_lays_clips_side_by_side() {
    let source = synthetic_clip(40, 20, 4);
    let edit = synthetic_clip(20, 20, 4);
    let out = grid(&[source.clone(), edit, synthetic_clip(30, 10, 4)]);
    // Heights follow the first clip: widths 40, 20, 60 plus two gaps.
    assert_eq!((out.width, out.height), (40 + 20 + 60 + 2 * GRID_GAP, 20));
    assert_eq!(out.frames.len(), 4);
    let row = out.width as usize * 3;
    assert_eq!(&out.frames[0][..40 * 3], &source.frames[0][..40 * 3]);
    assert_eq!(
        &out.frames[0][40 * 3..44 * 3],
        &[255; GRID_GAP as usize * 3][..]
    );
    assert_eq!(out.frames[0].len(), row * 20);
    assert!(grid(&[]).frames.is_empty());
}

#[test]
fn natural_order_sorts_numbers_by_value() {
    let mut names = vec!["f10.png", "f2.png", "f1.png", "f02.png"];
    names.sort_by(|a, b| natural_cmp(a, b));
    assert_eq!(names, vec!["f1.png", "f2.png", "f02.png", "f10.png"]);
}

#[test]
fn gif_delays_keep_total_duration() {
    let total: u32 = (0..30).map(|i| u32::from(gif_delay(i, 3.0))).sum();
    assert_eq!(total, 1000);
    assert_eq!(gif_delay(0, 10.0), 10);
    assert_eq!(gif_delay(0, 200.0), GIF_MIN_DELAY_CS);
}

/// An MP4 whose `trak` holds a box of size 0 (found by fuzzing: the mp4 crate seeks back to
/// the same header forever) is refused as invalid, at once.
#[test]
fn zero_sized_box_inside_a_container_is_refused_not_looped_on() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/fuzz/mp4-zero-size-box-in-trak.mp4");
    let started = std::time::Instant::now();
    let error = read_clip(&path, sampling(0, 1, 1)).unwrap_err().to_string();
    assert!(error.contains("MP4 structure is invalid"), "{error}");
    assert!(error.contains("smaller than its header"), "{error}");
    assert!(started.elapsed().as_secs() < 5);
}
