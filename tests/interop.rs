//! Files written by the tools users have, read by tav: LoRAs saved by diffusers and PEFT
//! (with and without `lora_adapter_metadata`), converted by diffusers' kohya converter (int64
//! alphas, `lora_te1_` on SD v1), written in sd-scripts' convention by LyCORIS (f16 alphas),
//! under transformers 4 and 5 names; a single file written by diffusers' own conversion
//! script; a model folder saved by diffusers and transformers. Each merge is compared with
//! diffusers' own `fuse_lora` result; each refusal names the format or the field.
//!
//! The files, the script that wrote them and the tools' versions are in
//! `tests/fixtures/interop/` (CI has no torch, so the generated files are committed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tav_core::checkpoint::{Folder, LoadOptions, Models, check_components_fit};
use tav_core::clip::ClipTextEncoder;
use tav_core::lora::{Lora, Patched, Patches, Target};
use tav_core::single_file::{Component, Configs, SingleFile, UnetLayout, infer_configs};
use tav_core::weights::{HostTensor, ParamBuilder, ParamEntry, SafetensorsFile, TensorSource};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/interop")
}

fn manifest() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cpu() -> Device {
    Device::flex()
}

fn base_configs() -> Configs {
    tav_tests::folder_configs(&fixtures().join("base"))
}

fn unet_entries(configs: &Configs) -> Vec<ParamEntry> {
    tav_core::params::unet_param_entries(&configs.unet, &cpu()).unwrap()
}

fn text_entries(configs: &Configs) -> Vec<ParamEntry> {
    let p = ParamBuilder::shapes_only(&cpu());
    ClipTextEncoder::load(&p, &configs.clip).unwrap();
    p.entries()
}

fn open(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(&fixtures().join(name)).unwrap()
}

/// ‖a − b‖ / ‖b‖ and the largest |a − b|.
fn errors(a: &HostTensor, b: &HostTensor) -> (f64, f64) {
    assert_eq!(a.shape, b.shape);
    let (mut diff, mut norm, mut worst) = (0f64, 0f64, 0f64);
    for (x, y) in a.data.iter().zip(&b.data) {
        let d = (*x as f64 - *y as f64).abs();
        diff += d * d;
        norm += (*y as f64).powi(2);
        worst = worst.max(d);
    }
    ((diff / norm.max(1e-30)).sqrt(), worst)
}

/// Every LoRA the tools wrote merges into the weights diffusers' `fuse_lora` gives, at each
/// scale it was fused at, and changes exactly the tensors diffusers changed.
#[test]
fn loras_from_the_tools_merge_as_diffusers_fuses_them() {
    let configs = base_configs();
    let base = fixtures().join("base");
    let unet_base =
        SafetensorsFile::open(&base.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let text_base = SafetensorsFile::open(&base.join("text_encoder/model.safetensors")).unwrap();
    let (unet, text) = (unet_entries(&configs), text_entries(&configs));
    let layout = UnetLayout::of(&configs.unet);
    let mut checked = 0;
    for (case, entry) in manifest() {
        if entry["kind"] != "lora" {
            continue;
        }
        let file = open(entry["file"].as_str().unwrap());
        for (scale, fused) in entry["expected_fused"].as_object().unwrap() {
            let scale: f64 = scale.parse().unwrap();
            let lora = Lora::read(&file, scale).unwrap_or_else(|e| panic!("{case}: {e}"));
            let unet_patches =
                Patches::resolve(&[&lora], Target::Unet, &unet, Some(&layout)).unwrap();
            let text_patches = Patches::resolve(&[&lora], Target::TextEncoder, &text, None)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let merged_unet = Patched {
                base: &unet_base,
                patches: &unet_patches,
            };
            let merged_text = Patched {
                base: &text_base,
                patches: &text_patches,
            };
            let expected = open(fused.as_str().unwrap());
            let mut expected_keys = BTreeSet::new();
            for key in expected.keys() {
                let (merged, ours): (&dyn TensorSource, String) =
                    if let Some(k) = key.strip_prefix("unet.") {
                        (&merged_unet, k.to_string())
                    } else {
                        let k = key.strip_prefix("text_encoder.").unwrap();
                        // The fused file names the text encoder as the transformers that
                        // fused it did (5 drops `text_model.`).
                        let k = if k.starts_with("text_model.") {
                            k.to_string()
                        } else {
                            format!("text_model.{k}")
                        };
                        (&merged_text, k)
                    };
                let ours_tensor = merged
                    .fetch(&ours)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{case}: no `{ours}`"));
                let theirs = expected.fetch(&key).unwrap().unwrap();
                let (rel, worst) = errors(&ours_tensor, &theirs);
                assert!(
                    rel < 1e-6 && worst < 1e-5,
                    "{case} at scale {scale}: `{ours}` differs from diffusers' fuse_lora: \
                     relative {rel:.2e}, largest {worst:.2e}"
                );
                // The merge really changed it (a vacuous comparison would pass too).
                let before = if key.starts_with("unet.") {
                    unet_base.fetch(&ours)
                } else {
                    text_base.fetch(&ours)
                }
                .unwrap()
                .unwrap();
                assert!(
                    errors(&before, &theirs).1 > 1e-3,
                    "{case}: `{ours}` unchanged"
                );
                expected_keys.insert(ours);
            }
            let ours: BTreeSet<String> = unet_patches
                .keys()
                .chain(text_patches.keys())
                .cloned()
                .collect();
            assert_eq!(ours, expected_keys, "{case}: the tensors the merge changes");
            checked += 1;
        }
    }
    assert!(checked >= 9, "every LoRA case ran ({checked})");
}

/// Files that are not plain LoRAs, or that would merge to nothing or divide by zero, are
/// refused with their format or field named, and the file.
#[test]
fn other_adapter_formats_and_broken_loras_are_refused_by_name() {
    let configs = base_configs();
    let (unet, text) = (unet_entries(&configs), text_entries(&configs));
    let layout = UnetLayout::of(&configs.unet);
    let mut checked = 0;
    for (case, entry) in manifest() {
        if entry["kind"] != "refused" {
            continue;
        }
        let name = entry["file"].as_str().unwrap();
        let outcome = Lora::read(&open(name), 1.0).and_then(|lora| {
            Patches::resolve(&[&lora], Target::Unet, &unet, Some(&layout))?;
            Patches::resolve(&[&lora], Target::TextEncoder, &text, None)
        });
        let message = match outcome {
            Ok(_) => panic!("{case}: {name} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(name), "{case}: names the file: {message}");
        for word in entry["expected_error_words"].as_array().unwrap() {
            assert!(
                message.contains(word.as_str().unwrap()),
                "{case}: {word} in {message}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "every refused case ran");
}

/// diffusers' `convert_diffusers_to_original_stable_diffusion.py --half` output maps back to
/// exactly the folder's weights (as diffusers' `from_single_file` loads them), with nothing
/// unmapped, under the folder's configs and under configs inferred from shapes.
#[test]
fn single_file_from_diffusers_converter_maps_to_the_folder() {
    let configs = base_configs();
    let base = fixtures().join("base");
    let file = open("single_file_fp16.safetensors");
    let inferred = infer_configs(&file.shapes(), file.path()).unwrap();
    assert_eq!(
        inferred.unet.block_out_channels,
        configs.unet.block_out_channels
    );
    assert_eq!(
        inferred.unet.layers_per_block,
        configs.unet.layers_per_block
    );
    assert_eq!(
        inferred.vae.block_out_channels,
        configs.vae.block_out_channels
    );
    assert_eq!(inferred.clip.hidden_size, configs.clip.hidden_size);
    assert_eq!(
        inferred.clip.num_hidden_layers,
        configs.clip.num_hidden_layers
    );
    for configs in [&configs, &inferred] {
        let single =
            SingleFile::new(open("single_file_fp16.safetensors"), configs, &cpu()).unwrap();
        assert!(
            single.unmapped.is_empty(),
            "unmapped: {:?}",
            single.unmapped
        );
        for (component, path) in [
            (Component::Unet, "unet/diffusion_pytorch_model.safetensors"),
            (Component::Vae, "vae/diffusion_pytorch_model.safetensors"),
            (Component::TextEncoder, "text_encoder/model.safetensors"),
        ] {
            let folder = SafetensorsFile::open(&base.join(path)).unwrap();
            let source = single.source(component);
            // Every parameter of the model (temporal layers aside, which no 2D file has).
            let p = ParamBuilder::verifying(&source, &cpu())
                .with_fallback(tav_core::unet::temporal_init(0));
            match component {
                Component::Unet => {
                    tav_core::unet::UNet3D::load(&p, &configs.unet).unwrap();
                }
                Component::Vae => {
                    tav_core::vae::Vae::load(&p, &configs.vae).unwrap();
                }
                Component::TextEncoder => {
                    ClipTextEncoder::load(&p, &configs.clip).unwrap();
                }
            }
            let keys = source.keys();
            assert!(keys.len() > 30, "{path}: {} keys", keys.len());
            for key in keys {
                let ours = source.fetch(&key).unwrap().unwrap();
                let theirs = folder.fetch(&key).unwrap().unwrap();
                assert_eq!(ours.shape, theirs.shape, "{key}");
                for (a, b) in ours.data.iter().zip(&theirs.data) {
                    assert_eq!(*a, half::f16::from_f32(*b).to_f32(), "{key}");
                }
            }
        }
    }
}

/// The folder diffusers and transformers saved loads whole, with a LoRA of each format from
/// the tools merged, and its components fit each other.
#[test]
fn folder_saved_by_diffusers_loads_with_the_tools_loras() {
    let base = fixtures().join("base");
    check_components_fit(&base_configs(), "base").unwrap();
    let loras = ["peft_metadata", "kohya_from_diffusers", "kohya_fp16_alpha"]
        .iter()
        .map(|case| {
            std::sync::Arc::new(Lora::read(&open(&format!("{case}.safetensors")), 0.7).unwrap())
        })
        .collect();
    let options = LoadOptions {
        loras,
        ..Default::default()
    };
    let models = Models::load(&Folder(base), None, &options, &cpu()).unwrap();
    for r in &models.report {
        assert!(
            r.unexpected.is_empty(),
            "{}: {:?}",
            r.component,
            r.unexpected
        );
    }
}

/// A text encoder wider than the UNet's cross-attention is refused at load, naming both
/// widths, instead of failing inside the first matrix product.
#[test]
fn components_of_different_models_are_refused_at_load() {
    let mut configs = base_configs();
    configs.clip.hidden_size = 128;
    let message = check_components_fit(&configs, "model")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("128") && message.contains("cross_attention_dim"),
        "{message}"
    );
    let mut configs = base_configs();
    configs.vae.latent_channels = 8;
    let message = check_components_fit(&configs, "model")
        .unwrap_err()
        .to_string();
    assert!(message.contains("latent_channels"), "{message}");
}

/// A text encoder saved by transformers 5 (names without `text_model.`) loads as the same
/// model as the one transformers 4 saved: same tensors under tav's names, and a whole folder
/// with it gives the same text embedding.
#[test]
fn text_encoder_saved_by_transformers5_loads() {
    use tav_core::checkpoint::ClipNames;
    let configs = base_configs();
    let t5 = open("text_encoder_transformers5/model.safetensors");
    assert!(!t5.keys().iter().any(|k| k.starts_with("text_model.")));
    let t4 = open("base/text_encoder/model.safetensors");
    let named = ClipNames::of(&t5);
    let p = ParamBuilder::verifying(&named, &cpu());
    ClipTextEncoder::load(&p, &configs.clip).unwrap();
    for key in t4.keys() {
        assert_eq!(
            named.fetch(&key).unwrap().unwrap().data,
            t4.fetch(&key).unwrap().unwrap().data,
            "{key}"
        );
    }
    // The whole folder, its text encoder replaced by transformers 5's.
    let dir = std::env::temp_dir().join(format!("tav-interop-t5-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tav_tests::copy_dir(&fixtures().join("base"), &dir);
    std::fs::remove_dir_all(dir.join("text_encoder")).unwrap();
    tav_tests::copy_dir(
        &fixtures().join("text_encoder_transformers5"),
        &dir.join("text_encoder"),
    );
    let embed = |folder: &Path| {
        let models = Models::load(
            &Folder(folder.to_path_buf()),
            None,
            &LoadOptions::default(),
            &cpu(),
        )
        .unwrap();
        let ids = models.tokenizer.encode("a red circle").unwrap();
        let out = models.text_encoder.forward(&[ids], &cpu()).unwrap();
        out.into_data().try_to_vec::<f32>().unwrap()
    };
    assert_eq!(embed(&dir), embed(&fixtures().join("base")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The toy model tav ships (written by `tav pretrain`) is a folder diffusers and transformers
/// load as it is: `{"format": "pt"}` in every weights file, the tokenizer's config files, the
/// pipeline's components in `model_index.json`. (`tests/fixtures/interop/check_loads.py` loads
/// it with diffusers itself where torch is installed.)
#[test]
fn toy_model_is_a_folder_diffusers_loads() {
    tav_tests::assert_loadable_by_diffusers(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/toy-model"),
    );
}

/// A LoRA as ComfyUI saves it names the UNet's modules in the original layout, dotted
/// (`diffusion_model.input_blocks.1.1.proj_in`): diffusers' kohya-converted file renamed so
/// merges to exactly what diffusers fused from the original.
#[test]
fn original_layout_dotted_names_merge_the_same() {
    let configs = base_configs();
    let layout = UnetLayout::of(&configs.unet);
    let unet = unet_entries(&configs);
    let flat_to_original: std::collections::HashMap<String, String> = unet
        .iter()
        .filter_map(|e| {
            let module = e.key.strip_suffix(".weight")?;
            let original = tav_core::single_file::unet_key(&e.key, &layout)?;
            let original = original
                .strip_prefix(tav_core::single_file::UNET_PREFIX)?
                .strip_suffix(".weight")?
                .to_string();
            Some((module.replace('.', "_"), original))
        })
        .collect();
    let source = fixtures().join("kohya_from_diffusers.safetensors");
    let renamed: std::collections::BTreeMap<String, tav_tests::RawTensor> =
        tav_tests::read_raw(&source)
            .into_iter()
            .filter_map(|(key, tensor)| {
                let rest = key.strip_prefix("lora_unet_")?;
                let (module, part) = rest.split_once('.')?;
                let original = flat_to_original.get(module)?;
                Some((format!("diffusion_model.{original}.{part}"), tensor))
            })
            .collect();
    assert!(renamed.len() > 30, "{} tensors renamed", renamed.len());
    let dir = std::env::temp_dir().join(format!("tav-interop-comfy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("comfy.safetensors");
    tav_tests::write_raw(&path, &renamed);
    let lora = Lora::read(&SafetensorsFile::open(&path).unwrap(), 1.0).unwrap();
    let patches = Patches::resolve(&[&lora], Target::Unet, &unet, Some(&layout)).unwrap();
    let base =
        SafetensorsFile::open(&fixtures().join("base/unet/diffusion_pytorch_model.safetensors"))
            .unwrap();
    let merged = Patched {
        base: &base,
        patches: &patches,
    };
    let expected = open("kohya_from_diffusers.fused.safetensors");
    let mut compared = 0;
    for key in expected.keys() {
        let Some(ours) = key.strip_prefix("unet.") else {
            continue;
        };
        let (rel, _) = errors(
            &merged.fetch(ours).unwrap().unwrap(),
            &expected.fetch(&key).unwrap().unwrap(),
        );
        assert!(rel < 1e-6, "{ours}: {rel:.2e}");
        compared += 1;
    }
    assert_eq!(compared, patches.keys().count());
    let _ = std::fs::remove_dir_all(&dir);
}
