//! Models as users have them: single-file checkpoints in the original (CompVis/A1111)
//! layout and LoRA files (kohya and PEFT), on burn's CPU backend (loading only, fast).
//! The golden set itself runs through the single-file loader in `tests/golden.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Device;
use safetensors::Dtype;
use tav_core::TavError;
use tav_core::checkpoint::{Folder, LoadOptions, load_text_encoder, load_unet};
use tav_core::clip::ClipTextEncoder;
use tav_core::config::{ClipConfig, UNetConfig, VaeConfig};
use tav_core::lora::{Lora, Patched, Patches, Target};
use tav_core::single_file::{
    SingleFile, UnetLayout, clip_key, identify, infer_clip, infer_configs, infer_unet, infer_vae,
    refuse_pickle, unet_key, vae_key,
};
use tav_core::vae::Vae;
use tav_core::weights::{ParamBuilder, SafetensorsFile, TensorSource};
use tav_tests::{
    RawTensor, folder_configs, golden_dirs, read_raw, to_vec, write_raw, write_single_file,
};

fn cpu() -> Device {
    Device::flex()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tav-single-file-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn error_of<T>(r: tav_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Every golden set's folder, written as one file through the mapping, reads back the same
/// tensors, bit for bit, under the same names, and has the same UNet fingerprint.
#[test]
fn single_file_written_from_a_folder_reads_back_bit_identical() {
    for dir in golden_dirs() {
        let model = dir.join("model");
        let path = scratch("identical").join("model.safetensors");
        write_single_file(&model, &path);
        let configs = folder_configs(&model);
        let single =
            SingleFile::new(SafetensorsFile::open(&path).unwrap(), &configs, &cpu()).unwrap();
        assert!(single.unmapped.is_empty(), "{:?}", single.unmapped);
        for (component, file) in [
            (
                tav_core::single_file::Component::Unet,
                "unet/diffusion_pytorch_model.safetensors",
            ),
            (
                tav_core::single_file::Component::Vae,
                "vae/diffusion_pytorch_model.safetensors",
            ),
            (
                tav_core::single_file::Component::TextEncoder,
                "text_encoder/model.safetensors",
            ),
        ] {
            let folder = SafetensorsFile::open(&model.join(file)).unwrap();
            let source = single.source(component);
            // The single file serves the VAE's attention under diffusers' current names
            // (`to_q`), whatever the folder's diffusers version called them (`query`).
            let current = |k: &str| {
                k.replace(".query.", ".to_q.")
                    .replace(".key.", ".to_k.")
                    .replace(".value.", ".to_v.")
                    .replace(".proj_attn.", ".to_out.0.")
            };
            let folder_keys: BTreeMap<String, String> = folder
                .keys()
                .into_iter()
                .filter(|k| !k.ends_with("position_ids"))
                .map(|k| (current(&k), k))
                .collect();
            let mut keys = source.keys();
            keys.retain(|k| !k.ends_with("position_ids"));
            assert_eq!(
                keys,
                folder_keys.keys().cloned().collect::<Vec<_>>(),
                "{file}: the same tensors"
            );
            for key in &keys {
                let a = folder.fetch(&folder_keys[key]).unwrap().unwrap();
                let b = source.fetch(key).unwrap().unwrap();
                assert_eq!(a.shape, b.shape, "{key}");
                assert!(
                    a.data
                        .iter()
                        .zip(&b.data)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{key}: values differ"
                );
            }
            if component == tav_core::single_file::Component::Unet {
                assert_eq!(
                    tav_core::delta::fingerprint(&source),
                    tav_core::delta::fingerprint(&folder),
                    "tuned weights from the folder edit with the single file, and back"
                );
            }
        }
    }
}

/// The original key names exactly as CompVis, A1111 and diffusers' converter write them.
#[test]
fn keys_map_to_the_original_names_tools_write() {
    let layout = UnetLayout::of(&UNetConfig::sd_v1_5());
    let cases = [
        (
            "conv_in.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
        ),
        (
            "time_embedding.linear_2.bias",
            "model.diffusion_model.time_embed.2.bias",
        ),
        (
            "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight",
            "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight",
        ),
        (
            "down_blocks.1.resnets.0.conv_shortcut.weight",
            "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        ),
        (
            "down_blocks.2.downsamplers.0.conv.weight",
            "model.diffusion_model.input_blocks.9.0.op.weight",
        ),
        (
            "down_blocks.3.resnets.1.time_emb_proj.weight",
            "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight",
        ),
        (
            "mid_block.resnets.1.conv2.bias",
            "model.diffusion_model.middle_block.2.out_layers.3.bias",
        ),
        (
            "mid_block.attentions.0.proj_in.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight",
        ),
        (
            "up_blocks.0.upsamplers.0.conv.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
        ),
        (
            "up_blocks.1.upsamplers.0.conv.weight",
            "model.diffusion_model.output_blocks.5.2.conv.weight",
        ),
        (
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight",
            "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
        ),
        (
            "up_blocks.3.resnets.2.norm1.weight",
            "model.diffusion_model.output_blocks.11.0.in_layers.0.weight",
        ),
        ("conv_norm_out.weight", "model.diffusion_model.out.0.weight"),
        ("conv_out.bias", "model.diffusion_model.out.2.bias"),
    ];
    for (diffusers, original) in cases {
        assert_eq!(
            unet_key(diffusers, &layout).as_deref(),
            Some(original),
            "{diffusers}"
        );
    }
    let vae = [
        (
            "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        ),
        (
            "encoder.down_blocks.0.downsamplers.0.conv.bias",
            "first_stage_model.encoder.down.0.downsample.conv.bias",
        ),
        (
            "decoder.up_blocks.0.resnets.2.conv1.weight",
            "first_stage_model.decoder.up.3.block.2.conv1.weight",
        ),
        (
            "decoder.up_blocks.2.upsamplers.0.conv.weight",
            "first_stage_model.decoder.up.1.upsample.conv.weight",
        ),
        (
            "encoder.mid_block.attentions.0.to_q.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight",
        ),
        (
            "decoder.mid_block.attentions.0.proj_attn.bias",
            "first_stage_model.decoder.mid.attn_1.proj_out.bias",
        ),
        (
            "decoder.mid_block.attentions.0.group_norm.weight",
            "first_stage_model.decoder.mid.attn_1.norm.weight",
        ),
        (
            "encoder.mid_block.resnets.1.norm2.weight",
            "first_stage_model.encoder.mid.block_2.norm2.weight",
        ),
        (
            "encoder.conv_norm_out.bias",
            "first_stage_model.encoder.norm_out.bias",
        ),
        (
            "post_quant_conv.weight",
            "first_stage_model.post_quant_conv.weight",
        ),
    ];
    for (diffusers, original) in vae {
        assert_eq!(
            vae_key(diffusers, 4).as_deref(),
            Some(original),
            "{diffusers}"
        );
    }
    assert_eq!(
        clip_key("text_model.encoder.layers.11.self_attn.q_proj.weight"),
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight"
    );
}

/// SD v1.5's shapes in the original layout (from the models' own parameter lists) give back
/// SD v1.5's configs.
fn sd15_original_shapes() -> BTreeMap<String, Vec<usize>> {
    let device = cpu();
    let layout = UnetLayout::of(&UNetConfig::sd_v1_5());
    let mut shapes = BTreeMap::new();
    for e in tav_core::params::unet_param_entries(&UNetConfig::sd_v1_5(), &device).unwrap() {
        if !tav_core::unet::is_temporal(&e.key) {
            shapes.insert(unet_key(&e.key, &layout).unwrap(), e.shape);
        }
    }
    let p = ParamBuilder::shapes_only(&device);
    Vae::load(&p, &VaeConfig::sd_v1_5()).unwrap();
    for e in p.entries() {
        let mut shape = e.shape.clone();
        if tav_core::single_file::is_vae_attention_projection(&e.key) {
            shape.extend([1, 1]);
        }
        shapes.insert(vae_key(&e.key, 4).unwrap(), shape);
    }
    let p = ParamBuilder::shapes_only(&device);
    ClipTextEncoder::load(&p, &ClipConfig::sd_v1_5()).unwrap();
    for e in p.entries() {
        shapes.insert(clip_key(&e.key), e.shape);
    }
    shapes
}

#[test]
fn configs_are_inferred_from_shapes() {
    let shapes = sd15_original_shapes();
    identify(&shapes, "sd15.safetensors").unwrap();
    let configs = infer_configs(&shapes, "sd15.safetensors").unwrap();
    assert_eq!(configs.unet, UNetConfig::sd_v1_5());
    assert_eq!(configs.vae, VaeConfig::sd_v1_5());
    assert_eq!(configs.clip, ClipConfig::sd_v1_5());

    // A small model of another shape: everything shapes tell is read from them.
    for dir in golden_dirs() {
        let model = dir.join("model");
        let path = scratch("infer").join("model.safetensors");
        write_single_file(&model, &path);
        let shapes = SafetensorsFile::open(&path).unwrap().shapes();
        let folder = folder_configs(&model);
        let unet = infer_unet(&shapes, "x").unwrap();
        assert_eq!(unet.block_out_channels, folder.unet.block_out_channels);
        assert_eq!(unet.layers_per_block, folder.unet.layers_per_block);
        assert_eq!(unet.cross_attention_dim, folder.unet.cross_attention_dim);
        assert_eq!(unet.down_block_types, folder.unet.down_block_types);
        assert_eq!(unet.up_block_types, folder.unet.up_block_types);
        let vae = infer_vae(&shapes, "x").unwrap();
        assert_eq!(vae.block_out_channels, folder.vae.block_out_channels);
        assert_eq!(vae.layers_per_block, folder.vae.layers_per_block);
        assert_eq!(vae.latent_channels, folder.vae.latent_channels);
        if !folder.clip.hidden_size.is_multiple_of(64) {
            // Heads cannot be told from shapes: the user is told to pass the configs.
            assert!(error_of(infer_clip(&shapes, "x")).contains("--model-config"));
        }
    }
}

#[test]
fn other_models_and_formats_are_refused_by_name() {
    let mut sdxl = sd15_original_shapes();
    sdxl.insert(
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(),
        vec![768],
    );
    sdxl.insert(
        "model.diffusion_model.label_emb.0.0.weight".into(),
        vec![1280, 2816],
    );
    assert!(error_of(identify(&sdxl, "xl.safetensors")).contains("Stable Diffusion XL"));

    let mut sd2 = sd15_original_shapes();
    sd2.insert(
        "cond_stage_model.model.token_embedding.weight".into(),
        vec![49408, 1024],
    );
    assert!(error_of(identify(&sd2, "v2.safetensors")).contains("2.x"));

    let mut inpainting = sd15_original_shapes();
    inpainting.insert(
        "model.diffusion_model.input_blocks.0.0.weight".into(),
        vec![320, 9, 3, 3],
    );
    let message = error_of(identify(&inpainting, "inpaint.safetensors"));
    assert!(
        message.contains("inpainting") && message.contains("9 input channels"),
        "{message}"
    );

    let message = error_of(refuse_pickle("v1-5-pruned-emaonly.ckpt"));
    assert!(
        message.contains("never unpickles") && message.contains("safetensors"),
        "{message}"
    );

    let lora: BTreeMap<String, Vec<usize>> =
        [("lora_unet_conv_in.lora_down.weight".to_string(), vec![4, 4])].into();
    assert!(error_of(identify(&lora, "style.safetensors")).contains("--lora"));

    // A real file: a 9-channel UNet written from a golden folder, and an extra tensor.
    let dir = &golden_dirs()[0];
    let path = scratch("refuse").join("model.safetensors");
    let mut tensors = write_single_file(&dir.join("model"), &path);
    let configs = folder_configs(&dir.join("model"));
    let extra = "model.diffusion_model.extra_head.weight".to_string();
    tensors.insert(extra.clone(), (Dtype::F32, vec![2], vec![0; 8]));
    write_raw(&path, &tensors);
    let single = SingleFile::new(SafetensorsFile::open(&path).unwrap(), &configs, &cpu()).unwrap();
    assert_eq!(
        single.unmapped,
        vec![extra],
        "keys that map nowhere are reported"
    );

    let conv_in = "model.diffusion_model.input_blocks.0.0.weight".to_string();
    let (dtype, shape, _) = tensors[&conv_in].clone();
    let widened = vec![shape[0], 9, shape[2], shape[3]];
    let bytes = vec![0u8; widened.iter().product::<usize>() * 4];
    tensors.insert(conv_in, (dtype, widened, bytes));
    write_raw(&path, &tensors);
    let message = error_of(SingleFile::new(
        SafetensorsFile::open(&path).unwrap(),
        &configs,
        &cpu(),
    ));
    assert!(message.contains("inpainting"), "{message}");
}

/// Tensor `key` of `source` as f64.
fn values(source: &dyn TensorSource, key: &str) -> Vec<f64> {
    source
        .fetch(key)
        .unwrap()
        .unwrap()
        .data
        .iter()
        .map(|&v| v as f64)
        .collect()
}

fn f32_tensor(shape: Vec<usize>, seed: usize) -> RawTensor {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n)
        .flat_map(|i| {
            ((((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * 0.1).to_le_bytes()
        })
        .collect();
    (Dtype::F32, shape, data)
}

fn floats(t: &RawTensor) -> Vec<f64> {
    t.2.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect()
}

/// B · A as `[out, k]`, in f64.
fn product(up: &RawTensor, down: &RawTensor) -> Vec<f64> {
    let (b, a) = (floats(up), floats(down));
    let (out, rank) = (up.1[0], down.1[0]);
    let k = a.len() / rank;
    let mut delta = vec![0.0; out * k];
    for o in 0..out {
        for r in 0..rank {
            for j in 0..k {
                delta[o * k + j] += b[o * rank + r] * a[r * k + j];
            }
        }
    }
    delta
}

/// Layers a test LoRA patches: (diffusers module, kohya stem, target, weight shape).
fn targets(model: &std::path::Path) -> Vec<(String, String, Target, Vec<usize>)> {
    let unet = read_raw(&model.join("unet/diffusion_pytorch_model.safetensors"));
    let text = read_raw(&model.join("text_encoder/model.safetensors"));
    let shape =
        |map: &BTreeMap<String, RawTensor>, key: &str| map[&format!("{key}.weight")].1.clone();
    let attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let proj_in = "down_blocks.0.attentions.0.proj_in";
    let conv = "down_blocks.0.resnets.0.conv1";
    let q_proj = "text_model.encoder.layers.0.self_attn.q_proj";
    vec![
        (
            attn.into(),
            format!("lora_unet_{}", attn.replace('.', "_")),
            Target::Unet,
            shape(&unet, attn),
        ),
        // kohya names in the original layout: input_blocks.1.1 is down_blocks.0.attentions.0.
        (
            proj_in.into(),
            "lora_unet_input_blocks_1_1_proj_in".into(),
            Target::Unet,
            shape(&unet, proj_in),
        ),
        (
            conv.into(),
            format!("lora_unet_{}", conv.replace('.', "_")),
            Target::Unet,
            shape(&unet, conv),
        ),
        (
            q_proj.into(),
            format!("lora_te_{}", q_proj.replace('.', "_")),
            Target::TextEncoder,
            shape(&text, q_proj),
        ),
    ]
}

/// A LoRA of known factors changes each targeted weight by exactly
/// scale · (alpha / rank) · B · A, in both formats, and nothing else.
#[test]
fn lora_merges_scale_alpha_over_rank_b_a_in_both_formats() {
    let model = golden_dirs()[0].join("model");
    let dir = scratch("lora");
    let rank = 2;
    let (scale, alpha) = (0.8, 1.0f32);
    for format in ["kohya", "peft"] {
        let mut tensors = BTreeMap::new();
        let mut factors = Vec::new();
        for (i, (module, stem, target, shape)) in targets(&model).into_iter().enumerate() {
            let mut down_shape = vec![rank];
            down_shape.extend(&shape[1..]);
            let mut up_shape = vec![shape[0], rank];
            if shape.len() == 4 {
                up_shape.extend([1, 1]);
            }
            let (down, up) = (
                f32_tensor(down_shape, 2 * i),
                f32_tensor(up_shape, 2 * i + 1),
            );
            let name = match (format, target) {
                ("kohya", _) => stem.clone(),
                (_, Target::Unet) => format!("unet.{module}"),
                (_, Target::TextEncoder) => format!("text_encoder.{module}"),
            };
            let (a, b) = if format == "kohya" {
                ("lora_down", "lora_up")
            } else {
                ("lora_A", "lora_B")
            };
            tensors.insert(format!("{name}.{a}.weight"), down.clone());
            tensors.insert(format!("{name}.{b}.weight"), up.clone());
            if format == "kohya" {
                tensors.insert(
                    format!("{name}.alpha"),
                    (Dtype::F32, vec![], alpha.to_le_bytes().to_vec()),
                );
            }
            factors.push((module, target, product(&up, &down)));
        }
        let path = dir.join(format!("{format}.safetensors"));
        write_raw(&path, &tensors);
        let lora = Lora::read(&SafetensorsFile::open(&path).unwrap(), scale).unwrap();
        // PEFT files carry no alpha: it is the rank.
        let factor = if format == "kohya" {
            scale * alpha as f64 / rank as f64
        } else {
            scale
        };
        for (target, file, entries) in [
            (
                Target::Unet,
                "unet/diffusion_pytorch_model.safetensors",
                unet_entries(&model),
            ),
            (
                Target::TextEncoder,
                "text_encoder/model.safetensors",
                text_entries(&model),
            ),
        ] {
            let base = SafetensorsFile::open(&model.join(file)).unwrap();
            let layout = UnetLayout::of(&folder_configs(&model).unet);
            let patches = Patches::resolve(&[&lora], target, &entries, Some(&layout)).unwrap();
            let patched = Patched {
                base: &base,
                patches: &patches,
            };
            for key in base.keys() {
                let merged = values(&patched, &key);
                let original = values(&base, &key);
                let expected: Vec<f64> = match factors
                    .iter()
                    .find(|(m, t, _)| *t == target && format!("{m}.weight") == key)
                {
                    Some((_, _, delta)) => original
                        .iter()
                        .zip(delta)
                        .map(|(w, d)| w + factor * d)
                        .collect(),
                    None => original.clone(),
                };
                let worst = merged
                    .iter()
                    .zip(&expected)
                    .map(|(m, e)| (m - e).abs())
                    .fold(0.0, f64::max);
                assert!(worst < 1e-6, "{format}: {key} off by {worst}");
            }
        }
    }
}

fn unet_entries(model: &std::path::Path) -> Vec<tav_core::weights::ParamEntry> {
    tav_core::params::unet_param_entries(&folder_configs(model).unet, &cpu()).unwrap()
}

fn text_entries(model: &std::path::Path) -> Vec<tav_core::weights::ParamEntry> {
    let p = ParamBuilder::shapes_only(&cpu());
    ClipTextEncoder::load(&p, &folder_configs(model).clip).unwrap();
    p.entries()
}

/// Through the loader: a LoRA on the text encoder changes its output, at scale 0 it does not;
/// one that fits no layer, or a layer of another shape, is refused by name.
#[test]
fn lora_loads_through_the_checkpoint_loader_and_misfits_are_refused() {
    let model = golden_dirs()[0].join("model");
    let folder = Folder(model.clone());
    let dir = scratch("lora-load");
    let device = cpu();
    let (module, _, _, shape) = targets(&model).pop().unwrap();
    let mut tensors = BTreeMap::new();
    tensors.insert(
        format!("text_encoder.{module}.lora_A.weight"),
        f32_tensor(vec![4, shape[1]], 1),
    );
    tensors.insert(
        format!("text_encoder.{module}.lora_B.weight"),
        f32_tensor(vec![shape[0], 4], 2),
    );
    let path = dir.join("te.safetensors");
    write_raw(&path, &tensors);
    let ids = vec![vec![49406, 320, 1929, 49407]];
    let encode = |scale: f64| {
        let lora = Lora::read(&SafetensorsFile::open(&path).unwrap(), scale).unwrap();
        let options = LoadOptions {
            loras: vec![std::sync::Arc::new(lora)],
            ..Default::default()
        };
        let (encoder, _, _) = load_text_encoder(&folder, &options, &device).unwrap();
        to_vec(encoder.forward(&ids, &device).unwrap())
    };
    let (base, _, _) = load_text_encoder(&folder, &LoadOptions::default(), &device).unwrap();
    let base = to_vec(base.forward(&ids, &device).unwrap());
    assert_eq!(encode(0.0), base, "scale 0 leaves the model as it was");
    let changed = encode(1.0);
    assert!(
        changed.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-4),
        "the LoRA changes the output"
    );

    let refused = |tensors: BTreeMap<String, RawTensor>| {
        write_raw(&path, &tensors);
        let lora = Lora::read(&SafetensorsFile::open(&path).unwrap(), 1.0).unwrap();
        let options = LoadOptions {
            loras: vec![std::sync::Arc::new(lora)],
            ..Default::default()
        };
        error_of(load_unet(&folder, None, &options, &device))
    };
    let mut nowhere = BTreeMap::new();
    nowhere.insert(
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight".into(),
        f32_tensor(vec![2, 8], 1),
    );
    nowhere.insert(
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight".into(),
        f32_tensor(vec![8, 2], 2),
    );
    let message = refused(nowhere);
    assert!(
        message.contains("fit no layer") && message.contains("down_blocks_9"),
        "{message}"
    );
    let mut misfit = BTreeMap::new();
    misfit.insert(
        "lora_unet_conv_in.lora_down.weight".into(),
        f32_tensor(vec![2, 3, 3, 3], 1),
    );
    misfit.insert(
        "lora_unet_conv_in.lora_up.weight".into(),
        f32_tensor(vec![7, 2, 1, 1], 2),
    );
    let message = refused(misfit);
    assert!(
        message.contains("does not fit") && message.contains("conv_in.weight"),
        "{message}"
    );
    let mut sdxl = BTreeMap::new();
    sdxl.insert(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
        f32_tensor(vec![2, 8], 1),
    );
    sdxl.insert(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(),
        f32_tensor(vec![8, 2], 2),
    );
    // `lora_te1_` alone is SD v1's one text encoder, as diffusers' kohya converter names it;
    // with `lora_te2_` beside it, the file is for SDXL's two.
    write_raw(&path, &sdxl);
    Lora::read(&SafetensorsFile::open(&path).unwrap(), 1.0).unwrap();
    sdxl.insert(
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
        f32_tensor(vec![2, 8], 1),
    );
    sdxl.insert(
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(),
        f32_tensor(vec![8, 2], 2),
    );
    write_raw(&path, &sdxl);
    let message = error_of(Lora::read(&SafetensorsFile::open(&path).unwrap(), 1.0));
    assert!(message.contains("Stable Diffusion XL"), "{message}");
}

/// Weights holding NaN are refused as they load, naming the file and the tensor.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let model = golden_dirs()[0].join("model");
    let dir = scratch("nan");
    let path = dir.join("model.safetensors");
    let mut tensors = write_single_file(&model, &path);
    let key = "first_stage_model.decoder.conv_out.bias".to_string();
    let (dtype, shape, mut bytes) = tensors[&key].clone();
    assert_eq!(dtype, Dtype::F32);
    bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    tensors.insert(key, (dtype, shape, bytes));
    write_raw(&path, &tensors);
    let configs = folder_configs(&model);
    let device = cpu();
    let single = SingleFile::new(SafetensorsFile::open(&path).unwrap(), &configs, &device).unwrap();
    let tokenizer = tav_core::checkpoint::load_tokenizer(&Folder(model), 77).unwrap();
    let err = tav_core::checkpoint::Models::load_single_file(
        &single,
        &configs,
        tokenizer,
        None,
        &LoadOptions::default(),
        &device,
    )
    .err()
    .expect("refused");
    assert!(matches!(err, TavError::NonFiniteWeights { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("model.safetensors")
            && message.contains("decoder.conv_out.bias")
            && message.contains("NaN"),
        "{message}"
    );
}

/// The variants users have: fp16 and bf16 files, EMA-only files (the UNet only as
/// `model_ema.*`), and full ones holding both (the regular weights are used; EMA noted).
#[test]
fn fp16_bf16_and_ema_variants_load() {
    let model = golden_dirs()[0].join("model");
    let dir = scratch("variants");
    let path = dir.join("model.safetensors");
    let tensors = write_single_file(&model, &path);
    let configs = folder_configs(&model);
    let device = cpu();
    let folder_unet =
        SafetensorsFile::open(&model.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let probe = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    let expected = values(&folder_unet, probe);
    let open = |tensors: &BTreeMap<String, RawTensor>| {
        write_raw(&path, tensors);
        SingleFile::new(SafetensorsFile::open(&path).unwrap(), &configs, &device).unwrap()
    };
    for (dtype, tolerance) in [(Dtype::F16, 1e-3), (Dtype::BF16, 1e-2)] {
        let converted: BTreeMap<String, RawTensor> = tensors
            .iter()
            .map(|(k, (d, shape, bytes))| {
                assert_eq!(*d, Dtype::F32);
                let halves = bytes.chunks_exact(4).flat_map(|b| {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if dtype == Dtype::F16 {
                        half::f16::from_f32(v).to_le_bytes()
                    } else {
                        half::bf16::from_f32(v).to_le_bytes()
                    }
                });
                (k.clone(), (dtype, shape.clone(), halves.collect()))
            })
            .collect();
        let single = open(&converted);
        let got = values(
            &single.source(tav_core::single_file::Component::Unet),
            probe,
        );
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < tolerance, "{dtype:?}: off by {worst}");
    }
    // EMA-only: the UNet's weights only under `model_ema.` + the key without dots.
    let ema_only: BTreeMap<String, RawTensor> = tensors
        .iter()
        .map(|(k, t)| match k.strip_prefix("model.") {
            Some(rest) if k.starts_with("model.diffusion_model.") => {
                (format!("model_ema.{}", rest.replace('.', "")), t.clone())
            }
            _ => (k.clone(), t.clone()),
        })
        .collect();
    let single = open(&ema_only);
    assert!(
        single
            .notes
            .iter()
            .any(|n| n.contains("EMA weights (model_ema.*) are used")),
        "{:?}",
        single.notes
    );
    assert_eq!(
        values(
            &single.source(tav_core::single_file::Component::Unet),
            probe
        ),
        expected
    );
    assert!(single.unmapped.is_empty(), "{:?}", single.unmapped);
    // Both: the regular ones are used, the EMA copy is noted, nothing is reported unmapped.
    let mut both = tensors.clone();
    both.extend(
        ema_only
            .into_iter()
            .filter(|(k, _)| k.starts_with("model_ema.")),
    );
    both.insert(
        "model_ema.num_updates".into(),
        (Dtype::F32, vec![], 0f32.to_le_bytes().to_vec()),
    );
    let single = open(&both);
    assert!(
        single.notes.iter().any(|n| n.contains("are not used")),
        "{:?}",
        single.notes
    );
    assert!(single.unmapped.is_empty(), "{:?}", single.unmapped);
    assert_eq!(
        values(
            &single.source(tav_core::single_file::Component::Unet),
            probe
        ),
        expected
    );
}
