//! Shared helpers for the integration tests: the device, golden sets, error measures.

pub mod f16_bounds;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, DeviceKind, Tensor};
use tav_core::weights::{HostTensor, SafetensorsFile, TensorSource};

/// The wgpu device (lavapipe where there is no GPU).
pub fn device() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// The project's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared` beside the project root.
pub fn shared_dir() -> PathBuf {
    repo_root().join("..").join("shared")
}

/// The golden directories: `TAV_GOLDEN_DIRS` (colon-separated), or every directory under
/// `../shared/golden/`.
pub fn golden_dirs() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("TAV_GOLDEN_DIRS") {
        return list
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    let root = shared_dir().join("golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// One golden set: its reference tensors and its JSON facts.
pub struct Golden {
    pub dir: PathBuf,
    pub tensors: SafetensorsFile,
    pub json: serde_json::Value,
}

impl Golden {
    pub fn open(dir: &Path) -> Self {
        let tensors =
            SafetensorsFile::open(&dir.join("cases.safetensors")).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(dir.join("cases.json"))
            .unwrap_or_else(|e| panic!("cannot read {}/cases.json: {e}", dir.display()));
        let json = serde_json::from_str(&text).expect("cases.json is JSON");
        Self {
            dir: dir.to_path_buf(),
            tensors,
            json,
        }
    }

    pub fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The f32 tensor `key` (panics with the key if absent).
    pub fn host(&self, key: &str) -> HostTensor {
        self.tensors
            .fetch(key)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("golden tensor `{key}` missing in {}", self.dir.display()))
    }

    /// An integer tensor (timesteps, token ids) as i64 values.
    pub fn ints(&self, key: &str) -> Vec<i64> {
        let bytes = std::fs::read(self.dir.join("cases.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("golden tensor `{key}` missing"));
        assert_eq!(view.dtype(), safetensors::Dtype::I64, "{key} is not I64");
        view.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        self.host(key).to_device(device)
    }

    /// Every tensor key of the golden set.
    pub fn keys(&self) -> Vec<String> {
        self.tensors.keys()
    }
}

/// Reads a tensor back to the host as f32.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("f32 readback")
}

/// ‖out − ref‖ / ‖ref‖.
pub fn rel_error(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let diff: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// One tensor as a file stores it: dtype, shape, raw little-endian bytes.
pub type RawTensor = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Every tensor of a safetensors file, raw.
pub fn read_raw(path: &Path) -> std::collections::BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// Writes raw tensors as a safetensors file.
pub fn write_raw(path: &Path, tensors: &std::collections::BTreeMap<String, RawTensor>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (dtype, shape, data))| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (k.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The diffusers folder `model` as one file in the original (CompVis/A1111) layout, through
/// tav's key mapping, as those tools write it: the VAE's attention projections as 1×1
/// convolutions, the DDPM schedule buffers beside the weights. Bytes are copied as stored,
/// so every tensor is bit-identical. Returns the raw tensors written.
pub fn write_single_file(
    model: &Path,
    out: &Path,
) -> std::collections::BTreeMap<String, RawTensor> {
    use tav_core::config::{UNetConfig, VaeConfig, parse_json};
    use tav_core::single_file::{
        UnetLayout, clip_key, is_vae_attention_projection, unet_key, vae_key,
    };
    let config = |relative: &str| std::fs::read_to_string(model.join(relative)).unwrap();
    let unet_cfg: UNetConfig = parse_json("unet", &config("unet/config.json")).unwrap();
    let vae_cfg: VaeConfig = parse_json("vae", &config("vae/config.json")).unwrap();
    let layout = UnetLayout::of(&unet_cfg);
    let blocks = vae_cfg.block_out_channels.len();
    let mut written = std::collections::BTreeMap::new();
    for (key, tensor) in read_raw(&model.join("unet/diffusion_pytorch_model.safetensors")) {
        let original = unet_key(&key, &layout).unwrap_or_else(|| panic!("unmapped UNet key {key}"));
        written.insert(original, tensor);
    }
    for (key, mut tensor) in read_raw(&model.join("vae/diffusion_pytorch_model.safetensors")) {
        let original = vae_key(&key, blocks).unwrap_or_else(|| panic!("unmapped VAE key {key}"));
        if is_vae_attention_projection(&key) {
            tensor.1.extend([1, 1]);
        }
        written.insert(original, tensor);
    }
    for (key, tensor) in read_raw(&model.join("text_encoder/model.safetensors")) {
        written.insert(clip_key(&key), tensor);
    }
    let betas: Vec<u8> = (0..1000)
        .flat_map(|i| (0.00085f32 + i as f32 * 1e-5).to_le_bytes())
        .collect();
    for buffer in ["betas", "alphas_cumprod"] {
        written.insert(
            buffer.to_string(),
            (safetensors::Dtype::F32, vec![1000], betas.clone()),
        );
    }
    write_raw(out, &written);
    written
}

/// Checks a folder has what diffusers' and transformers' `from_pretrained` need, as `tav
/// pretrain` writes it: `{"format": "pt"}` metadata in every weights file (transformers
/// refuses a file without it), the tokenizer's `tokenizer_config.json` (the 77-token limit)
/// and `special_tokens_map.json`, and `model_index.json` naming each component's class.
pub fn assert_loadable_by_diffusers(folder: &Path) {
    for weights in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        let bytes = std::fs::read(folder.join(weights)).unwrap();
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let format = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format").cloned());
        assert_eq!(format.as_deref(), Some("pt"), "{weights}: format metadata");
    }
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(folder.join("tokenizer/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["model_max_length"], 77);
    assert_eq!(config["tokenizer_class"], "CLIPTokenizer");
    let special: serde_json::Value = serde_json::from_slice(
        &std::fs::read(folder.join("tokenizer/special_tokens_map.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(special["bos_token"]["content"], "<|startoftext|>");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("model_index.json")).unwrap()).unwrap();
    for (component, library, class) in [
        ("unet", "diffusers", "UNet2DConditionModel"),
        ("vae", "diffusers", "AutoencoderKL"),
        ("text_encoder", "transformers", "CLIPTextModel"),
        ("tokenizer", "transformers", "CLIPTokenizer"),
        ("scheduler", "diffusers", "DDIMScheduler"),
    ] {
        assert_eq!(
            index[component],
            serde_json::json!([library, class]),
            "{component}"
        );
    }
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The configs of a diffusers folder, as a single file loaded with `--model-config` uses them.
pub fn folder_configs(model: &Path) -> tav_core::single_file::Configs {
    let read = |relative: &str| std::fs::read_to_string(model.join(relative)).unwrap();
    tav_core::single_file::configs_from_json(
        &read("unet/config.json"),
        &read("vae/config.json"),
        &read("text_encoder/config.json"),
        &read("scheduler/scheduler_config.json"),
    )
    .unwrap()
}
