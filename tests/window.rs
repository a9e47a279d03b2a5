//! Windowed inversion and editing (`core/src/method/window.rs`): with one window it is the
//! whole-clip method exactly; with several, every window is anchored on the clip's frame 0
//! and a frame's prediction depends only on the windows that hold it.

use burn::tensor::{Device, Distribution, Tensor};
use tav_core::config::{SchedulerConfig, UNetConfig};
use tav_core::edit::{Denoiser, Guidance};
use tav_core::progress::silent;
use tav_core::schedule::{Ddim, Schedule};
use tav_core::transformer::VideoAttentionOptions;
use tav_core::unet::UNet3D;
use tav_core::weights::RandomInit;
use tav_core::window::{Window, WindowedDenoiser};
use tav_tests::golden_dirs;

/// A UNet of the first golden set's config with random weights (the temporal layers' output
/// projections too, so frames exchange information), on burn's CPU backend, and its
/// cross-attention width.
fn unet(device: &Device) -> (UNet3D, usize) {
    let text = std::fs::read_to_string(golden_dirs()[0].join("model/unet/config.json")).unwrap();
    let cfg: UNetConfig = serde_json::from_str(&text).unwrap();
    let p = RandomInit { seed: 3 }.builder(device);
    (UNet3D::load(&p, &cfg).unwrap(), cfg.cross_attention_dim)
}

fn max_diff(a: Tensor<5>, b: Tensor<5>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn frame(x: &Tensor<5>, i: usize) -> Tensor<5> {
    x.clone().narrow(2, i, 1)
}

#[test]
fn one_window_is_the_whole_clip_method() {
    let device = Device::flex();
    let (unet, width) = unet(&device);
    let schedule = Schedule::new(&SchedulerConfig::sd_v1_5()).unwrap();
    let ddim = Ddim::new(&schedule, 3).unwrap();
    let denoiser = Denoiser {
        unet: &unet,
        ddim: &ddim,
        options: VideoAttentionOptions::default(),
    };
    let latents = Tensor::<5>::random([1, 4, 5, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let cond = Tensor::<3>::random([1, 7, width], Distribution::Normal(0.0, 1.0), &device);
    let uncond = Tensor::<3>::random([1, 7, width], Distribution::Normal(0.0, 1.0), &device);
    let windowed = WindowedDenoiser {
        denoiser,
        window: Window {
            size: 8,
            overlap: 2,
        },
    };
    let whole = denoiser
        .invert(latents.clone(), uncond.clone(), &mut silent)
        .unwrap()
        .pop()
        .unwrap();
    let inverted = windowed
        .invert(latents.clone(), uncond.clone(), &mut silent)
        .unwrap();
    assert!(max_diff(whole.clone(), inverted.clone()) < 1e-6);
    let guidance = Guidance {
        scale: 4.0,
        rescale: 0.5,
    };
    let a = denoiser
        .sample(whole, cond.clone(), uncond.clone(), guidance, &mut silent)
        .unwrap();
    let b = windowed
        .sample(inverted, cond, uncond, guidance, &mut silent)
        .unwrap();
    assert!(max_diff(a, b) < 1e-6);
}

#[test]
fn every_window_is_anchored_on_frame_0_and_sees_only_its_frames() {
    let device = Device::flex();
    let (unet, width) = unet(&device);
    let schedule = Schedule::new(&SchedulerConfig::sd_v1_5()).unwrap();
    // One step: a frame's result is its windows' prediction alone.
    let ddim = Ddim::new(&schedule, 1).unwrap();
    let windowed = WindowedDenoiser {
        denoiser: Denoiser {
            unet: &unet,
            ddim: &ddim,
            options: VideoAttentionOptions::default(),
        },
        // 7 frames: windows 0..3, 2..5, 4..7.
        window: Window {
            size: 3,
            overlap: 1,
        },
    };
    let context = Tensor::<3>::random([1, 7, width], Distribution::Normal(0.0, 1.0), &device);
    let latents = Tensor::<5>::random([1, 4, 7, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let invert = |x: Tensor<5>| windowed.invert(x, context.clone(), &mut silent).unwrap();
    let base = invert(latents.clone());
    assert!(base.clone().is_finite().all().into_scalar::<bool>());
    assert_eq!(base.dims(), [1, 4, 7, 8, 8]);

    let perturbed = |i: usize| {
        let mut frames: Vec<Tensor<5>> = (0..7).map(|j| frame(&latents, j)).collect();
        frames[i] = frames[i].clone().add_scalar(1.0);
        invert(Tensor::cat(frames, 2))
    };
    // Frame 6 is only in the last window (4..7), which is anchored on frame 0: a change to
    // frame 0 reaches it, a change to frame 3 (in the other windows only) does not.
    let from_0 = max_diff(frame(&perturbed(0), 6), frame(&base, 6));
    let from_3 = max_diff(frame(&perturbed(3), 6), frame(&base, 6));
    assert!(
        from_0 > 1e-4,
        "the anchor reaches the last window: {from_0}"
    );
    assert_eq!(from_3, 0.0, "frame 3 is outside frame 6's window");
    // Frame 4 is in the middle and last windows: a change to frame 3 reaches it through
    // the middle window's share of the blend.
    let into_4 = max_diff(frame(&perturbed(3), 4), frame(&base, 4));
    assert!(into_4 > 1e-4, "the overlap blends both windows: {into_4}");
}
