//! Choosing the GPU: wgpu picks an adapter (Vulkan, Metal, DX12, or lavapipe on the CPU),
//! and tav says which one it got.

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};

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
                "unknown device `{other}`: use auto, discrete[:N], integrated[:N], virtual[:N] or cpu"
            ));
        }
    })
}

/// Opens the adapter and describes it (name, type, graphics API).
pub fn open(choice: &str) -> Result<(Device, String), String> {
    let kind = parse_device_kind(choice)?;
    let (device, setup) = Device::wgpu_options().device_kind(kind).init_with_setup().map_err(|e| {
        format!(
            "no usable GPU adapter for --device {choice}: {e}. Install a Vulkan, Metal or DX12 driver \
             (without a GPU: Mesa's lavapipe, `apt-get install mesa-vulkan-drivers`), or try --device auto"
        )
    })?;
    let info: wgpu::AdapterInfo = setup.adapter.get_info();
    let description = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
    Ok((device, description))
}
