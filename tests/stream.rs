//! Streamed weights: a golden checkpoint packed for the web (`tav_core::pack`) and fed back
//! in odd-sized chunks, as a browser receives it, gives models that match the reference
//! within the f16 bound; the host never holds a whole component; a truncated or corrupt
//! shard is caught.

use std::collections::HashMap;

use burn::tensor::Tensor;
use tav_core::checkpoint::{Folder, MemoryFiles};
use tav_core::pack::{PackOptions, pack};
use tav_core::stream::{Manifest, ShardStream, StreamedWeights, build_models};
use tav_core::transformer::VideoAttentionOptions;
use tav_core::weights::SafetensorsFile;
use tav_tests::{Golden, device, golden_dirs, rel_error, to_vec};

/// f16 weights: the bound stated for the f16 path.
const TOL_F16: f64 = 1e-2;
const CHUNK: usize = 4099;

fn packed(dir: &std::path::Path, shard_bytes: u64) -> (Manifest, HashMap<String, Vec<u8>>) {
    let temporal = SafetensorsFile::open(&dir.join("temporal_init.safetensors")).unwrap();
    let mut files = HashMap::new();
    let options = PackOptions {
        name: "golden".into(),
        variant: None,
        shard_bytes,
        temporal: Some(&temporal),
    };
    let manifest = pack(&Folder(dir.join("model")), &options, &mut |path, bytes| {
        files.insert(path.to_string(), bytes.to_vec());
        Ok(())
    })
    .unwrap();
    let reparsed = Manifest::parse(std::str::from_utf8(&files["manifest.json"]).unwrap()).unwrap();
    assert_eq!(
        reparsed, manifest,
        "the written manifest is the one returned"
    );
    (manifest, files)
}

fn stream_all(
    manifest: &Manifest,
    files: &HashMap<String, Vec<u8>>,
    weights: &mut StreamedWeights,
) {
    for shard in &manifest.shards {
        let mut stream = ShardStream::new(shard);
        for chunk in files[&shard.file].chunks(CHUNK) {
            stream.feed(chunk, weights).unwrap();
        }
        stream.finish().unwrap();
    }
}

#[test]
fn streamed_models_match_the_reference_within_the_f16_bound() {
    for dir in golden_dirs() {
        let golden = Golden::open(&dir);
        let device = device();
        // Small shards, so components span several of them.
        let (manifest, files) = packed(&dir, 1 << 20);
        let component_bytes = |name: &str| -> u64 {
            manifest
                .shards
                .iter()
                .filter(|s| s.component == name)
                .map(|s| s.bytes)
                .sum()
        };
        let mut weights = StreamedWeights::new(&device, false);
        stream_all(&manifest, &files, &mut weights);
        let largest_tensor = manifest
            .shards
            .iter()
            .flat_map(|s| &s.tensors)
            .map(|t| t.bytes)
            .max()
            .unwrap();
        println!(
            "{}: {} shards, {} bytes; host peak while streaming {} bytes (largest tensor {largest_tensor}, unet {})",
            golden.name(),
            manifest.shards.len(),
            manifest.total_bytes(),
            weights.peak_host_bytes,
            component_bytes("unet"),
        );
        // One tensor at a time: never more than the largest tensor, never a whole UNet/VAE.
        assert!(
            weights.peak_host_bytes as u64 <= largest_tensor,
            "the host held {} bytes at once, more than the largest tensor ({largest_tensor})",
            weights.peak_host_bytes
        );
        assert!(
            (weights.peak_host_bytes as u64) < component_bytes("vae").max(component_bytes("unet"))
        );
        let mut tokenizer = MemoryFiles {
            name: "packed".into(),
            ..Default::default()
        };
        for f in &manifest.files {
            tokenizer
                .files
                .insert(f.path.clone(), files[&f.path].clone());
        }
        let models = build_models(&manifest, &mut weights, &tokenizer, 0).unwrap();

        let ids = golden.ints("text.input_ids");
        let reference = golden.host("text.hidden");
        let rows: Vec<Vec<u32>> = ids
            .chunks(reference.shape[1])
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect();
        let hidden = models.text_encoder.forward(&rows, &device).unwrap();
        let e = rel_error(&to_vec(hidden), &reference.data);
        println!("  text.hidden (streamed f16) rel.err {e:.2e}");
        assert!(e < TOL_F16);

        let latents: Tensor<4> = golden.tensor("vae.latents", &device);
        let decoded = models
            .vae
            .decode(latents.div_scalar(models.vae.scaling_factor));
        let e = rel_error(&to_vec(decoded), &golden.host("vae.decoded").data);
        println!("  vae.decoded (streamed f16) rel.err {e:.2e}");
        assert!(e < TOL_F16);

        for case in golden
            .keys()
            .iter()
            .filter(|k| k.starts_with("unet.init.") && k.ends_with(".out"))
        {
            let case = case.trim_end_matches(".out");
            let sample: Tensor<5> = golden.tensor(&format!("{case}.sample"), &device);
            let context: Tensor<3> =
                golden.tensor(&format!("{case}.encoder_hidden_states"), &device);
            let t = golden.ints(&format!("{case}.timestep"))[0] as f64;
            for kernels in [false, true] {
                let options = VideoAttentionOptions {
                    kernels,
                    ..VideoAttentionOptions::default()
                };
                let out = models
                    .unet
                    .forward(sample.clone(), &[t], context.clone(), options)
                    .unwrap();
                let e = rel_error(&to_vec(out), &golden.host(&format!("{case}.out")).data);
                println!("  {case} (streamed f16, kernels {kernels}) rel.err {e:.2e}");
                assert!(e < TOL_F16);
            }
        }
        let unet_report = models
            .report
            .iter()
            .find(|r| r.component == "unet")
            .unwrap();
        let original =
            SafetensorsFile::open(&dir.join("model/unet/diffusion_pytorch_model.safetensors"))
                .unwrap();
        assert_eq!(
            unet_report.fingerprint,
            tav_core::delta::fingerprint(&original),
            "tuned weights from the browser must load on the original folder"
        );
    }
}

#[test]
fn truncated_and_corrupt_shards_are_caught() {
    let dir = &golden_dirs()[0];
    let device = device();
    let (manifest, files) = packed(dir, 1 << 20);
    let shard = &manifest.shards[0];
    let bytes = &files[&shard.file];
    let mut weights = StreamedWeights::new(&device, false);

    let mut truncated = ShardStream::new(shard);
    truncated
        .feed(&bytes[..bytes.len() / 2], &mut weights)
        .unwrap();
    let e = truncated.finish().unwrap_err().to_string();
    println!("truncated: {e}");
    assert!(e.contains("incomplete") && e.contains(&shard.file), "{e}");

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x40;
    let mut corrupt = ShardStream::new(shard);
    corrupt.feed(&flipped, &mut weights).unwrap();
    let e = corrupt.finish().unwrap_err().to_string();
    println!("corrupt: {e}");
    assert!(e.contains("corrupt") && e.contains(&shard.file), "{e}");

    let mut too_long = ShardStream::new(shard);
    let mut longer = bytes.clone();
    longer.push(0);
    let e = too_long
        .feed(&longer, &mut weights)
        .unwrap_err()
        .to_string();
    println!("too long: {e}");
    assert!(e.contains("longer"), "{e}");

    let e = Manifest::parse("{\"format\": \"tav-web-0\"}")
        .unwrap_err()
        .to_string();
    println!("bad manifest: {e}");
    assert!(e.contains("manifest"), "{e}");
}
