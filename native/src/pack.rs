//! `tav pack-web MODEL_DIR OUT_DIR`: the checkpoint folder packed for the browser
//! (see `tav_core::pack`), written atomically file by file.

use std::path::Path;

use tav_core::Result;
use tav_core::checkpoint::Folder;
use tav_core::pack::{PackOptions, pack};
use tav_core::stream::Manifest;
use tav_core::weights::SafetensorsFile;

use crate::job::write_atomic;

/// Packs `model` into `out`.
pub fn pack_web(
    model: &Path,
    out: &Path,
    variant: Option<&str>,
    shard_bytes: u64,
    temporal: Option<&Path>,
) -> Result<Manifest> {
    let temporal = temporal.map(SafetensorsFile::open).transpose()?;
    let name = std::fs::canonicalize(model)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let options = PackOptions {
        name,
        variant,
        shard_bytes,
        temporal: temporal.as_ref(),
    };
    pack(
        &Folder(model.to_path_buf()),
        &options,
        &mut |relative, bytes| write_atomic(&out.join(relative), bytes),
    )
}
