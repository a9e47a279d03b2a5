//! What one device allows. burn keeps every tensor in one GPU buffer bound whole to a
//! kernel, so no tensor may be larger than the adapter's largest buffer *and* largest
//! storage binding (about 2 GiB on NVIDIA's Vulkan driver, 128 MiB on lavapipe and in
//! WebGPU's defaults). Work that would make a larger tensor is split (frames of the VAE,
//! rows of the feed-forward, the two halves of a guided batch) or refused up front.

use crate::error::{Result, TavError};

/// The device's limits, as its adapter reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The largest tensor, in bytes: `min(max_buffer_size, max_storage_buffer_binding_size)`.
    pub max_buffer_bytes: u64,
    /// The device's memory, where it is known (wgpu does not report it; `--memory` or the
    /// host's free memory on burn's CPU backend).
    pub memory_bytes: Option<u64>,
}

impl DeviceLimits {
    /// No limit on one tensor (burn's CPU backend, whose tensors live in host memory).
    pub const UNLIMITED: DeviceLimits = DeviceLimits {
        max_buffer_bytes: u64::MAX,
        memory_bytes: None,
    };

    /// WebGPU's default limits (what a browser grants a page that asks for nothing more).
    pub const WEBGPU_DEFAULT: DeviceLimits = DeviceLimits {
        max_buffer_bytes: 128 << 20,
        memory_bytes: None,
    };

    /// From the two wgpu limits that bound one tensor.
    pub fn from_wgpu(max_buffer_size: u64, max_storage_buffer_binding_size: u64) -> Self {
        Self {
            max_buffer_bytes: max_buffer_size.min(max_storage_buffer_binding_size),
            memory_bytes: None,
        }
    }

    /// How many items of `bytes_each` fit in one buffer, at most `wanted`. Refuses when not
    /// even one fits, naming `what` and `knob` (what the user can reduce).
    pub fn items_per_buffer(
        &self,
        bytes_each: u64,
        wanted: usize,
        what: &str,
        knob: &str,
    ) -> Result<usize> {
        if bytes_each > self.max_buffer_bytes {
            return Err(TavError::OutOfMemory(format!(
                "{what} needs a {} buffer and this device allows at most {} in one buffer: {knob}",
                human_bytes(bytes_each),
                human_bytes(self.max_buffer_bytes)
            )));
        }
        let fit = (self.max_buffer_bytes / bytes_each.max(1)).min(wanted as u64) as usize;
        Ok(fit.max(1))
    }
}

impl Default for DeviceLimits {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// `1.5 GiB`, `96.0 MiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_per_buffer_fills_the_buffer_and_refuses_what_cannot_fit() {
        let limits = DeviceLimits::from_wgpu(1 << 30, 128 << 20);
        assert_eq!(limits.max_buffer_bytes, 128 << 20);
        assert_eq!(limits.items_per_buffer(32 << 20, 24, "x", "y").unwrap(), 4);
        assert_eq!(limits.items_per_buffer(1, 24, "x", "y").unwrap(), 24);
        let err = limits
            .items_per_buffer(
                256 << 20,
                24,
                "decoding one 512×512 frame",
                "reduce --width/--height",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("256.0 MiB") && err.contains("128.0 MiB"),
            "{err}"
        );
        assert!(err.contains("reduce --width/--height"), "{err}");
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
