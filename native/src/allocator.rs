//! The C allocator's settings for tensor work on the CPU (`--device flex`).
//!
//! burn's CPU backend allocates a fresh buffer for nearly every op's output and frees its
//! inputs. glibc serves blocks over its mmap threshold (128 KiB at first) with `mmap` and
//! returns them with `munmap`, so each op's output was new pages: a page fault and a zeroed
//! page every 4 KiB, then the same again for the next op. On the toy job that cost a quarter
//! of the tuning step (1.08 s → 0.79 s a step on 2 cores, BENCHMARKS.md). Raising the mmap
//! threshold to glibc's largest (32 MiB) and the trim threshold above it keeps freed blocks
//! in the heap for the next op to reuse. Blocks over 32 MiB (Stable Diffusion's activations)
//! are still mapped and returned at once, so memory held back is bounded.

/// glibc's `mallopt` parameters (malloc.h).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    pub const M_TRIM_THRESHOLD: i32 = -1;
    pub const M_MMAP_THRESHOLD: i32 = -3;
    /// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
    pub const MMAP_THRESHOLD_MAX: i32 = 32 << 20;
    /// Heap memory above this at the top is given back to the system.
    pub const TRIM_THRESHOLD: i32 = 256 << 20;

    unsafe extern "C" {
        pub fn mallopt(param: i32, value: i32) -> i32;
    }
}

/// Applies the settings; returns whether the allocator took them (false off glibc).
pub fn tune_for_tensor_work() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's thresholds; called once at start, before any
        // thread that allocates is spawned.
        unsafe {
            glibc::mallopt(glibc::M_MMAP_THRESHOLD, glibc::MMAP_THRESHOLD_MAX) == 1
                && glibc::mallopt(glibc::M_TRIM_THRESHOLD, glibc::TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_thresholds() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(super::tune_for_tensor_work());
    }
}
