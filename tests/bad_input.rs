//! Every bad checkpoint a user can hand tav gets a clear error naming the file and tensor;
//! the variants users really have (fp16 files, old VAE attention names, bf16) load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use tav_core::TavError;
use tav_core::checkpoint::{Folder, LoadOptions, load_text_encoder, load_unet, load_vae};
use tav_tests::{RawTensor, device, golden_dirs, read_raw, to_vec, write_raw};

/// Every tensor of a file as stored: dtype, shape, raw little-endian bytes.
type Stored = BTreeMap<String, RawTensor>;

fn read_stored(path: &Path) -> Stored {
    read_raw(path)
}

fn write_stored(path: &Path, tensors: &Stored) {
    write_raw(path, tensors)
}

/// A scratch copy of the first golden set's model folder.
fn scratch_model(name: &str) -> PathBuf {
    let source = golden_dirs()[0].join("model");
    let dest = std::env::temp_dir().join(format!("tav-bad-input-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    tav_tests::copy_dir(&source, &dest);
    dest
}

fn vae_file(model: &Path) -> PathBuf {
    model.join("vae/diffusion_pytorch_model.safetensors")
}

fn vae_error(model: &Path) -> TavError {
    match load_vae(
        &Folder(model.to_path_buf()),
        &LoadOptions::default(),
        &device(),
    ) {
        Ok(_) => panic!("loading {} should fail", model.display()),
        Err(e) => e,
    }
}

fn f32_to_f16_bytes(data: &[u8]) -> Vec<u8> {
    data.chunks_exact(4)
        .flat_map(|b| half_bits(f32::from_le_bytes(b.try_into().unwrap())))
        .collect()
}

fn half_bits(v: f32) -> [u8; 2] {
    burn::tensor::f16::from_f32(v).to_le_bytes()
}

#[test]
fn missing_weights_file_names_the_path() {
    let model = scratch_model("missing-file");
    std::fs::remove_file(vae_file(&model)).unwrap();
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(message.contains("missing file"), "{message}");
    assert!(
        message.contains("vae/diffusion_pytorch_model.safetensors"),
        "{message}"
    );
}

#[test]
fn missing_config_names_the_path() {
    let model = scratch_model("missing-config");
    std::fs::remove_file(model.join("vae/config.json")).unwrap();
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(message.contains("vae/config.json"), "{message}");
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let model = scratch_model("missing-tensor");
    let mut tensors = read_stored(&vae_file(&model));
    tensors.remove("decoder.conv_out.weight").unwrap();
    write_stored(&vae_file(&model), &tensors);
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(
        message.contains("missing tensor `decoder.conv_out.weight`"),
        "{message}"
    );
    assert!(
        message.contains("vae/diffusion_pytorch_model.safetensors"),
        "{message}"
    );
}

#[test]
fn shape_mismatch_shows_expected_and_found() {
    let model = scratch_model("shape");
    let mut tensors = read_stored(&vae_file(&model));
    let entry = tensors.get_mut("quant_conv.bias").unwrap();
    let n = entry.1[0];
    entry.1 = vec![n + 1];
    entry.2.extend_from_slice(&0f32.to_le_bytes());
    write_stored(&vae_file(&model), &tensors);
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(
        message.contains("shape mismatch for tensor `quant_conv.bias`"),
        "{message}"
    );
    assert!(
        message.contains(&format!("expected [{n}], found [{}]", n + 1)),
        "{message}"
    );
}

#[test]
fn truncated_file_is_reported_as_truncated() {
    let model = scratch_model("truncated");
    let bytes = std::fs::read(vae_file(&model)).unwrap();
    std::fs::write(vae_file(&model), &bytes[..bytes.len() - 1000]).unwrap();
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(message.contains("truncated"), "{message}");
    assert!(
        message.contains("vae/diffusion_pytorch_model.safetensors"),
        "{message}"
    );
}

#[test]
fn corrupt_header_is_reported() {
    let model = scratch_model("corrupt");
    let mut bytes = std::fs::read(vae_file(&model)).unwrap();
    for b in bytes.iter_mut().skip(8).take(16) {
        *b = b'#';
    }
    std::fs::write(vae_file(&model), &bytes).unwrap();
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(
        message.contains("corrupt or truncated safetensors file"),
        "{message}"
    );
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let model = scratch_model("dtype");
    let mut tensors = read_stored(&vae_file(&model));
    tensors.get_mut("quant_conv.bias").unwrap().0 = Dtype::I32;
    write_stored(&vae_file(&model), &tensors);
    let message = vae_error(&model).to_string();
    println!("{message}");
    assert!(
        message.contains("unsupported dtype I32 for tensor `quant_conv.bias`"),
        "{message}"
    );
}

#[test]
fn extra_tensors_are_reported_not_dropped() {
    let model = scratch_model("extra");
    let mut tensors = read_stored(&vae_file(&model));
    tensors.insert(
        "encoder.surprise.weight".into(),
        (Dtype::F32, vec![1], 1f32.to_le_bytes().to_vec()),
    );
    write_stored(&vae_file(&model), &tensors);
    let (_, _, report) = load_vae(&Folder(model), &LoadOptions::default(), &device()).unwrap();
    println!("unexpected: {:?}", report.unexpected);
    assert_eq!(
        report.unexpected,
        vec!["encoder.surprise.weight".to_string()]
    );
}

#[test]
fn fp16_variant_file_loads_and_converts() {
    let model = scratch_model("fp16");
    let plain = model.join("text_encoder/model.safetensors");
    let mut tensors = read_stored(&plain);
    for entry in tensors.values_mut() {
        entry.0 = Dtype::F16;
        entry.2 = f32_to_f16_bytes(&entry.2);
    }
    std::fs::remove_file(&plain).unwrap();
    write_stored(&model.join("text_encoder/model.fp16.safetensors"), &tensors);
    let folder = Folder(model.clone());
    let device = device();
    let (encoder, _, report) =
        load_text_encoder(&folder, &LoadOptions::default(), &device).unwrap();
    assert!(
        report.file.ends_with("model.fp16.safetensors"),
        "{}",
        report.file
    );
    // The position embedding arrives as f32 equal to the f16-rounded original.
    let original = read_stored(&golden_dirs()[0].join("model/text_encoder/model.safetensors"));
    let (_, _, bytes) = &original["text_model.embeddings.position_embedding.weight"];
    let rounded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| burn::tensor::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_f32())
        .collect();
    assert_eq!(to_vec(encoder.position_embedding.val()), rounded);
    // An explicit variant that does not exist is a clear error.
    let options = LoadOptions {
        variant: Some("bf16".into()),
        ..Default::default()
    };
    let message = match load_text_encoder(&folder, &options, &device) {
        Ok(_) => panic!("bf16 variant should be missing"),
        Err(e) => e.to_string(),
    };
    println!("{message}");
    assert!(message.contains("model.bf16.safetensors"), "{message}");
}

#[test]
fn bf16_tensors_are_converted() {
    let model = scratch_model("bf16");
    let mut tensors = read_stored(&vae_file(&model));
    let entry = tensors.get_mut("quant_conv.bias").unwrap();
    let values: Vec<f32> = entry
        .2
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    entry.0 = Dtype::BF16;
    entry.2 = values
        .iter()
        .flat_map(|&v| burn::tensor::bf16::from_f32(v).to_le_bytes())
        .collect();
    write_stored(&vae_file(&model), &tensors);
    let (vae, _, _) = load_vae(&Folder(model), &LoadOptions::default(), &device()).unwrap();
    let expected: Vec<f32> = values
        .iter()
        .map(|&v| burn::tensor::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(to_vec(vae.quant_conv.bias.val()), expected);
}

#[test]
fn old_vae_attention_names_load_the_same_weights() {
    let model = scratch_model("old-names");
    let mut tensors = read_stored(&vae_file(&model));
    let renamed: Stored = tensors
        .iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v.clone())
        })
        .collect();
    assert!(
        renamed.keys().any(|k| k.contains(".query.")),
        "the VAE has attention to rename"
    );
    let old_query = renamed["encoder.mid_block.attentions.0.query.weight"].clone();
    tensors = renamed;
    write_stored(&vae_file(&model), &tensors);
    let (vae, _, report) = load_vae(&Folder(model), &LoadOptions::default(), &device()).unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    // burn keeps [in, out]; the file has [out, in].
    let loaded = to_vec(
        vae.encoder
            .mid_block
            .attention
            .to_q
            .weight
            .val()
            .transpose(),
    );
    let stored: Vec<f32> = old_query
        .2
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(loaded, stored);
}

#[test]
fn unet_with_missing_temporal_file_tensor_uses_init_and_reports_extras() {
    let model = scratch_model("temporal");
    let folder = Folder(model.clone());
    let device = device();
    // Without a temporal file, the new layers are initialised as the reference does.
    let (unet, _, report) = load_unet(&folder, None, &LoadOptions::default(), &device).unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let to_out = &unet.down_blocks[0].attentions[0].blocks[0].attn_temp.to_out;
    assert!(
        to_vec(to_out.weight.val()).iter().all(|&v| v == 0.0),
        "attn_temp.to_out.0.weight starts at zero"
    );
    assert!(
        to_vec(to_out.bias.as_ref().unwrap().val())
            .iter()
            .any(|&v| v != 0.0),
        "its bias does not"
    );
}

#[test]
fn tuned_weights_with_wrong_shapes_or_keys_are_refused() {
    use tav_core::delta::{TunedWeights, apply_tuned};
    use tav_core::weights::HostTensor;
    let model = golden_dirs()[0].join("model");
    let device = device();
    let (unet, _, _) = load_unet(&Folder(model), None, &LoadOptions::default(), &device).unwrap();
    let key = unet
        .params
        .iter()
        .find(|e| e.key.ends_with("attn1.to_q.weight"))
        .unwrap()
        .clone();
    let mut wrong = TunedWeights::default();
    let mut shape = key.shape.clone();
    shape[0] += 1;
    let n = shape.iter().product();
    wrong
        .tensors
        .insert(key.key.clone(), HostTensor::new(shape, vec![0.0; n]));
    let message = apply_tuned(unet.clone(), &wrong, "tuned.safetensors")
        .unwrap_err()
        .to_string();
    println!("{message}");
    assert!(message.contains("shape mismatch"), "{message}");
    assert!(message.contains(&key.key), "{message}");

    let mut unknown = TunedWeights::default();
    unknown.tensors.insert(
        "down_blocks.9.nothing.weight".into(),
        HostTensor::new(vec![1], vec![0.0]),
    );
    let message = apply_tuned(unet, &unknown, "tuned.safetensors")
        .unwrap_err()
        .to_string();
    println!("{message}");
    assert!(
        message.contains("not a parameter of this UNet"),
        "{message}"
    );
}

/// A file that is not tuned weights, handed to `--tuned`, is named as such (not "bad config").
#[test]
fn not_tuned_weights_errors_say_tuned_weights() {
    let path = golden_dirs()[0].join("model/vae/diffusion_pytorch_model.safetensors");
    let file = tav_core::weights::SafetensorsFile::open(&path).unwrap();
    let message = match tav_core::delta::TunedWeights::from_file(&file) {
        Ok(_) => panic!("a VAE is not tuned weights"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.starts_with("tuned weights ") && message.contains("not a tav tuned-weights file"),
        "{message}"
    );
    assert!(!message.contains("bad config"), "{message}");
}
