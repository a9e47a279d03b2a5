//! Choosing the GPU: wgpu picks an adapter (Vulkan, Metal, DX12, or lavapipe on the CPU),
//! and tav says which one it got.

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};
use tav_core::limits::DeviceLimits;

/// Which adapter to use, from `--device`.
pub fn parse_device_kind(choice: &str) -> Result<DeviceKind, String> {
    let (kind, index) = match choice.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| format!("bad device index in `{choice}`"))?,
        ),
        None => (choice, 0),
    };
    Ok(match kind {
        "auto" => DeviceKind::DefaultDevice,
        "discrete" => DeviceKind::DiscreteGpu(index),
        "integrated" => DeviceKind::IntegratedGpu(index),
        "virtual" => DeviceKind::VirtualGpu(index),
        "cpu" => DeviceKind::Cpu,
        other => {
            return Err(format!(
                "unknown device `{other}`: use auto, discrete[:N], integrated[:N], virtual[:N], cpu, flex or torch"
            ));
        }
    })
}

/// An opened device: the handle, what it is, and what it allows.
pub struct Opened {
    pub device: Device,
    pub description: String,
    pub limits: DeviceLimits,
    /// The device's smallest subgroup, where it has subgroup operations (even where tav does
    /// not split attention rows over them: CPU adapters).
    pub subgroup_size: Option<u32>,
    /// What the adapter is and allows, as one JSON object (`tav bench --probe`): name,
    /// driver, backend, `shader-f16`, subgroup sizes, limits.
    pub probe: serde_json::Value,
}

/// Opens the device for `--device` and describes it (name, type, graphics API). `flex` is
/// burn's CPU backend instead of a wgpu adapter. The wgpu device is created with the
/// adapter's own (largest) limits, which are what tav sizes its work by.
pub fn open(choice: &str) -> Result<Opened, String> {
    if choice == "flex" {
        let (device, description) = flex();
        return Ok(on_the_host(
            device,
            description,
            "flex (burn's CPU backend)",
            available_threads(),
        ));
    }
    if choice == "torch" {
        return libtorch();
    }
    let kind = parse_device_kind(choice)?;
    let (device, setup) = Device::wgpu_options().device_kind(kind).init_with_setup().map_err(|e| {
        format!(
            "no usable GPU adapter for --device {choice}: {e}. Install a Vulkan, Metal or DX12 driver \
             (without a GPU: Mesa's lavapipe, `apt-get install mesa-vulkan-drivers`), use \
             --device flex (burn's CPU backend), or try --device auto"
        )
    })?;
    let info: wgpu::AdapterInfo = setup.adapter.get_info();
    let mut description = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
    if info.device_type == wgpu::DeviceType::Cpu {
        // lavapipe: right for the WGSL kernels and memory checks, slow for convolutions.
        description.push_str(
            "; a Vulkan driver on the CPU: with --attention plain, --device flex is several times faster",
        );
    }
    // cubecl opens the device with every feature the adapter has, subgroups included. A CPU
    // adapter (llvmpipe) has them too, but its invocations are SIMD lanes with no register
    // pressure to relieve: splitting rows there measured 0–10% slower (BENCHMARKS.md), so
    // only GPUs split them.
    let subgroup_size = setup
        .device
        .features()
        .contains(wgpu::Features::SUBGROUP)
        .then_some(info.subgroup_min_size);
    let on_gpu = info.device_type != wgpu::DeviceType::Cpu;
    tav_core::kernels::use_subgroups(&device, subgroup_size.filter(|_| on_gpu));
    let granted = setup.device.limits();
    let limits = DeviceLimits::from_wgpu(
        granted.max_buffer_size,
        granted.max_storage_buffer_binding_size,
    );
    let features = setup.device.features();
    let probe = serde_json::json!({
        "adapter": info.name, "vendor": info.vendor, "device_id": info.device,
        "device_type": format!("{:?}", info.device_type),
        "backend": format!("{:?}", info.backend),
        "driver": info.driver, "driver_info": info.driver_info,
        "shader_f16": features.contains(wgpu::Features::SHADER_F16),
        "subgroups": features.contains(wgpu::Features::SUBGROUP),
        "subgroup_min_size": info.subgroup_min_size,
        "subgroup_max_size": info.subgroup_max_size,
        "max_buffer_size": granted.max_buffer_size,
        "max_storage_buffer_binding_size": granted.max_storage_buffer_binding_size,
        "max_compute_workgroup_storage_size": granted.max_compute_workgroup_storage_size,
        "max_compute_invocations_per_workgroup": granted.max_compute_invocations_per_workgroup,
    });
    Ok(Opened {
        device,
        description,
        limits,
        subgroup_size,
        probe,
    })
}

/// Burn's CPU backend: no GPU API, so tav's WGSL kernels do not run there.
fn flex() -> (Device, String) {
    let threads = available_threads();
    (
        Device::flex(),
        format!("burn's CPU backend (flex, {threads} threads)"),
    )
}

/// burn's libtorch backend on the CPU: PyTorch's own CPU kernels (its convolutions, matrix
/// products and vectorised element-wise ops) under tav's model and autodiff. Built only with
/// the `libtorch` feature, since it links libtorch (BENCHMARKS.md "The CPU path").
#[cfg(feature = "libtorch")]
fn libtorch() -> Result<Opened, String> {
    #[allow(deprecated)]
    // burn marks its libtorch backend deprecated; it is still the fastest CPU path
    let device = Device::libtorch();
    // libtorch sizes its thread pool from OMP_NUM_THREADS, else the cores it may use.
    let threads = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(available_threads);
    let description = format!("libtorch on the CPU ({threads} threads)");
    Ok(on_the_host(
        device,
        description,
        "libtorch (burn-tch, CPU)",
        threads,
    ))
}

/// A CPU backend (no wgpu adapter, no WGSL kernels): sized by the host's free memory.
fn on_the_host(device: Device, description: String, backend: &str, threads: usize) -> Opened {
    Opened {
        device,
        probe: serde_json::json!({
            "adapter": description, "backend": backend,
            "threads": threads, "shader_f16": false,
        }),
        description,
        subgroup_size: None,
        limits: DeviceLimits {
            memory_bytes: free_host_memory(),
            ..DeviceLimits::UNLIMITED
        },
    }
}

fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(not(feature = "libtorch"))]
fn libtorch() -> Result<Opened, String> {
    Err(
        "--device torch runs on libtorch, and this tav was built without it: build one against \
         an installed PyTorch with `bash native/libtorch.sh --python PYTHON` (it writes \
         target/debug/tav-torch; docs/usage.md), or use --device flex"
            .into(),
    )
}

/// `--attention`: how sparse-causal and temporal attention run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttentionChoice {
    /// tav's WGSL kernels: online softmax, no score matrix (needs a wgpu adapter).
    Kernels,
    /// The tensor-op reference path (materialises the scores).
    Plain,
}

impl AttentionChoice {
    /// Whether to run the kernels: asked for (`--attention kernels`, or the old `--kernels`),
    /// refused where WGSL does not run; by default wherever it does.
    pub fn resolve(choice: Option<Self>, old_flag: bool, device: &Device) -> Result<bool, String> {
        let wgsl = tav_core::kernels::runs_wgsl(device);
        match (choice, old_flag) {
            (Some(AttentionChoice::Plain), _) => Ok(false),
            (Some(AttentionChoice::Kernels), _) | (None, true) if !wgsl => Err(
                "--attention kernels runs tav's WGSL kernels, which need a wgpu adapter; \
                 --device flex and --device torch have none (use --attention plain, or pick a GPU adapter)"
                    .into(),
            ),
            (Some(AttentionChoice::Kernels), _) | (None, true) => Ok(true),
            (None, false) => Ok(wgsl),
        }
    }
}

/// `--recompute`: whether tuning runs each block again in backward instead of keeping its
/// activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecomputeChoice {
    /// On when the tuning step, keeping every activation, would be planned over
    /// [`tav_core::plan::RECOMPUTE_ABOVE_BYTES`] (any Stable Diffusion job; not the tiny models).
    Auto,
    On,
    Off,
}

/// Memory the host can still hand out (Linux's `MemAvailable`), if known.
pub fn free_host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(all(test, not(feature = "libtorch")))]
mod device_tests {
    /// Without the `libtorch` feature, `--device torch` is refused, saying how to build it.
    #[test]
    fn torch_without_libtorch_is_refused_saying_how_to_build_it() {
        let Err(message) = super::open("torch") else {
            panic!("--device torch opened in a build without libtorch");
        };
        assert!(message.contains("native/libtorch.sh"), "{message}");
        assert!(message.contains("--device flex"), "{message}");
    }
}

#[cfg(test)]
mod sparse_causal_tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use tav_core::attention::sparse_causal_context;

    /// Frame i's context is frame 0's tokens then frame i−1's (frame 0: its own twice), in
    /// every video of the batch, on burn's CPU backend (`--device flex`) as on wgpu.
    #[test]
    fn sparse_causal_context_is_frame_zero_then_the_previous_frame() {
        let (videos, frames, tokens, channels) = (2, 8, 3, 2);
        // Each value names its video, frame, token and channel.
        let value =
            |b: usize, f: usize, l: usize, c: usize| (b * 1000 + f * 100 + l * 10 + c) as f32;
        let mut data = Vec::new();
        for b in 0..videos {
            for f in 0..frames {
                for l in 0..tokens {
                    for c in 0..channels {
                        data.push(value(b, f, l, c));
                    }
                }
            }
        }
        for device in [Device::flex(), Device::default()] {
            let t = Tensor::<3>::from_data(
                TensorData::new(data.clone(), [videos * frames, tokens, channels]),
                &device,
            );
            let out: Vec<f32> = sparse_causal_context(t, frames)
                .try_into_vec_as::<f32>()
                .expect("f32");
            let mut expected = Vec::new();
            for b in 0..videos {
                for f in 0..frames {
                    for source in [0, f.saturating_sub(1)] {
                        for l in 0..tokens {
                            for c in 0..channels {
                                expected.push(value(b, source, l, c));
                            }
                        }
                    }
                }
            }
            assert_eq!(out, expected, "{device:?}");
        }
    }
}
