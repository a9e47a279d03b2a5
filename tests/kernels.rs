//! The WGSL attention kernels against the plain tensor-op path (burn autodiff for the
//! gradients), on random inputs: sizes that are not multiples of the workgroup, 1, 2 and
//! many frames, batch 2, both attention modes, f32 and f16 storage.

use burn::tensor::{Device, Tensor};
use tav_core::attention::{
    frames_to_sequence, multi_head, sequence_to_frames, sparse_causal_context,
};
use tav_core::draws::SeededRng;
use tav_core::weights::HostTensor;
use tav_shaders::runner::{KernelRunner, Qkv, Shape};
use tav_shaders::{AttentionMode, Capabilities, Kernel};
use tav_tests::{device, rel_error, to_vec};

struct Plain {
    out: Vec<f32>,
    d_q: Vec<f32>,
    d_k: Vec<f32>,
    d_v: Vec<f32>,
}

/// Output and gradients of `sum(out ∘ d_out)` through the plain path.
fn plain(shape: &Shape, q: &[f32], k: &[f32], v: &[f32], d_out: &[f32], device: &Device) -> Plain {
    let ad = device.clone().autodiff();
    let dims = vec![
        shape.videos * shape.frames,
        shape.tokens,
        shape.heads * shape.head_dim,
    ];
    let leaf = |data: &[f32]| {
        HostTensor::new(dims.clone(), data.to_vec())
            .to_device::<3>(&ad)
            .require_grad()
    };
    let (qt, kt, vt) = (leaf(q), leaf(k), leaf(v));
    let out = match shape.mode {
        AttentionMode::SparseCausal => multi_head(
            qt.clone(),
            sparse_causal_context(kt.clone(), shape.frames),
            sparse_causal_context(vt.clone(), shape.frames),
            shape.heads,
            None,
        ),
        AttentionMode::Temporal => sequence_to_frames(
            multi_head(
                frames_to_sequence(qt.clone(), shape.frames),
                frames_to_sequence(kt.clone(), shape.frames),
                frames_to_sequence(vt.clone(), shape.frames),
                shape.heads,
                None,
            ),
            shape.videos,
        ),
    };
    let weight: Tensor<3> = HostTensor::new(dims.clone(), d_out.to_vec()).to_device(&ad);
    let grads = (out.clone() * weight).sum().backward();
    let grad = |t: &Tensor<3>| to_vec(t.grad(&grads).expect("gradient"));
    Plain {
        out: to_vec(out.inner()),
        d_q: grad(&qt),
        d_k: grad(&kt),
        d_v: grad(&vt),
    }
}

fn check(runner: &mut KernelRunner, shape: Shape, f16: bool, tol: f64, device: &Device) {
    let n = shape.elements();
    let mut rng = SeededRng::new(n as u64 + shape.frames as u64);
    let (q, k, v, d_out) = (
        rng.normal_vec(n),
        rng.normal_vec(n),
        rng.normal_vec(n),
        rng.normal_vec(n),
    );
    // The reference sees the same (rounded) inputs as the f16 kernels.
    let round = |x: &[f32]| -> Vec<f32> {
        if f16 {
            x.iter()
                .map(|v| burn::tensor::f16::from_f32(*v).to_f32())
                .collect()
        } else {
            x.to_vec()
        }
    };
    let (q, k, v, d_out) = (round(&q), round(&k), round(&v), round(&d_out));
    let reference = plain(&shape, &q, &k, &v, &d_out, device);
    let inputs = Qkv {
        q: &q,
        k: &k,
        v: &v,
    };
    let forward = runner.forward(&shape, inputs, f16).unwrap();
    let backward = runner
        .backward(&shape, inputs, &forward, &d_out, f16)
        .unwrap();
    let errors = [
        ("out", rel_error(&forward.out, &reference.out)),
        ("dq", rel_error(&backward.d_q, &reference.d_q)),
        ("dk", rel_error(&backward.d_k, &reference.d_k)),
        ("dv", rel_error(&backward.d_v, &reference.d_v)),
    ];
    println!("{shape:?} f16={f16}: {errors:?}");
    for (name, err) in errors {
        assert!(
            err <= tol,
            "{name} rel.err {err:.3e} > {tol:.0e} for {shape:?} (f16={f16})"
        );
    }
}

fn shapes() -> Vec<Shape> {
    let mut all = Vec::new();
    for mode in [AttentionMode::SparseCausal, AttentionMode::Temporal] {
        for (videos, frames, tokens, heads, head_dim) in [
            (1, 1, 37, 2, 8),
            (1, 2, 70, 2, 8),
            (2, 5, 37, 2, 8),
            (2, 3, 65, 1, 40),
            (1, 8, 16, 4, 16),
        ] {
            all.push(Shape {
                videos,
                frames,
                tokens,
                heads,
                head_dim,
                mode,
            });
        }
    }
    all
}

#[test]
fn kernels_match_plain_path_f32() {
    let device = device();
    let mut runner = KernelRunner::new().unwrap();
    println!("adapter: {}", runner.adapter);
    for shape in shapes() {
        check(&mut runner, shape, false, 1e-4, &device);
    }
}

#[test]
fn kernels_match_plain_path_f16_storage() {
    let device = device();
    let mut runner = KernelRunner::new().unwrap();
    if !runner.has_f16() {
        println!(
            "{} has no shader-f16: f16 storage is not checked here",
            runner.adapter
        );
        return;
    }
    for shape in shapes() {
        check(&mut runner, shape, true, 1e-2, &device);
    }
}

/// With subgroups, the tiled kernels split a row's head over 2 or 4 invocations that sum
/// their partial scores with subgroup shuffles; without, one invocation holds it all. Both
/// against the plain path, at heads split as far as they divide (`lane_vecs` lowered, so
/// small heads split too): heads not a multiple of 4, 1 and 5 frames (frame 0's key
/// gradients in chunks), 2 videos, tokens not a multiple of the tile, f32 and f16 storage.
#[test]
fn tiled_kernels_split_over_subgroup_lanes_match_plain_path() {
    let device = device();
    let mut runner = KernelRunner::new().unwrap();
    let adapter = runner.capabilities;
    let Some(subgroup) = adapter.subgroup_size else {
        assert!(
            !runner.adapter.starts_with("llvmpipe"),
            "lavapipe has subgroups: the device should have been opened with them"
        );
        println!(
            "{} has no subgroups: only the fallback runs here",
            runner.adapter
        );
        return;
    };
    let split = Capabilities {
        lane_vecs: 1,
        ..adapter
    };
    let fallback = Capabilities {
        subgroup_size: None,
        ..adapter
    };
    let mut lanes_seen = Vec::new();
    for (videos, frames, tokens, head_dim) in [
        (2, 5, 37, 8),
        (1, 1, 70, 16),
        (1, 2, 65, 6),
        (1, 3, 33, 40),
        (1, 2, 20, 80),
    ] {
        let shape = Shape {
            videos,
            frames,
            tokens,
            heads: 2,
            head_dim,
            mode: AttentionMode::SparseCausal,
        };
        for capabilities in [split, fallback] {
            runner.capabilities = capabilities;
            let lanes = capabilities.lanes(Kernel::TiledForward, head_dim);
            println!("head {head_dim}: {lanes} lanes (subgroups of {subgroup})");
            lanes_seen.push(lanes);
            check(&mut runner, shape, false, 1e-4, &device);
            if runner.has_f16() {
                check(&mut runner, shape, true, 1e-2, &device);
            }
        }
    }
    assert!(lanes_seen.contains(&2) && lanes_seen.contains(&4) && lanes_seen.contains(&1));
}

/// Temporal attention's tiles (a few tokens' frames per workgroup, each token's keys staged
/// apart) against the plain path where they are hardest to get right: a head so large that
/// one group of keys per token is staged per step (24 frames × 2 tokens at 160, a tile with
/// idle rows), frames past a workgroup's 64 rows (two frame tiles, the second partly empty),
/// 21 frames of 3 tokens (10 keys a step: a group partly past a token's run; the last tile
/// short of tokens), two videos and heads, the loop budget lowered so rows run in passes over
/// frames, subgroup lanes and none, f32 and f16 storage; and that the tiled kernels, not the
/// per-row ones, ran.
#[test]
fn temporal_tiles_match_plain_path() {
    let device = device();
    let mut runner = KernelRunner::new().unwrap();
    let adapter = runner.capabilities;
    let low_budget = Capabilities {
        loop_budget: Some(400),
        ..adapter
    };
    let variants = [
        adapter,
        low_budget,
        Capabilities {
            lane_vecs: 1,
            ..adapter
        },
        Capabilities {
            subgroup_size: None,
            ..adapter
        },
    ];
    for (videos, frames, tokens, heads, head_dim) in [
        (1, 24, 5, 1, 160),
        (2, 16, 9, 2, 80),
        (1, 70, 5, 2, 8),
        (1, 21, 7, 1, 40),
    ] {
        let shape = Shape {
            videos,
            frames,
            tokens,
            heads,
            head_dim,
            mode: AttentionMode::Temporal,
        };
        let info = shape.info(65_535);
        assert_eq!(
            info.kernels(true, tav_shaders::Tiling::Tiled),
            [Kernel::TiledBackwardQuery, Kernel::TemporalBackwardKeyValue],
            "{shape:?} runs the tiled kernels"
        );
        for capabilities in variants {
            runner.capabilities = capabilities;
            let passes = info
                .passes(Kernel::TemporalBackwardKeyValue, capabilities.loop_budget)
                .len();
            println!(
                "{shape:?}: {} tokens per tile, {passes} passes, {} lanes",
                info.tile_tokens(),
                capabilities.lanes(Kernel::TemporalBackwardKeyValue, head_dim)
            );
            check(&mut runner, shape, false, 1e-4, &device);
            if runner.has_f16() && capabilities == adapter {
                check(&mut runner, shape, true, 1e-2, &device);
            }
        }
    }
    // The lowered budget splits the 70 frames' rows into passes.
    let long = Shape {
        videos: 1,
        frames: 70,
        tokens: 5,
        heads: 2,
        head_dim: 8,
        mode: AttentionMode::Temporal,
    }
    .info(65_535);
    assert!(
        long.passes(Kernel::TiledForward, low_budget.loop_budget)
            .len()
            > 1
    );
}

#[test]
fn a_wrong_mode_is_caught_by_the_comparison() {
    // The check above can fail: temporal kernels do not match the sparse-causal reference.
    let device = device();
    let mut runner = KernelRunner::new().unwrap();
    let shape = Shape {
        videos: 1,
        frames: 3,
        tokens: 20,
        heads: 2,
        head_dim: 8,
        mode: AttentionMode::Temporal,
    };
    let n = shape.elements();
    let mut rng = SeededRng::new(5);
    let (q, k, v, d) = (
        rng.normal_vec(n),
        rng.normal_vec(n),
        rng.normal_vec(n),
        rng.normal_vec(n),
    );
    let sparse = Shape {
        mode: AttentionMode::SparseCausal,
        ..shape
    };
    let reference = plain(&sparse, &q, &k, &v, &d, &device);
    let inputs = Qkv {
        q: &q,
        k: &k,
        v: &v,
    };
    let forward = runner.forward(&shape, inputs, false).unwrap();
    assert!(rel_error(&forward.out, &reference.out) > 0.1);
}

/// f16 values on the device, from their exact f32 values.
fn f16_tensor<const D: usize>(values: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let data = burn::tensor::TensorData::from_bytes_vec(bytes, shape, burn::tensor::DType::F16);
    Tensor::from_data(data, (device, burn::tensor::DType::F16))
}

/// Values exactly representable in f16 (so widening must reproduce them bit for bit).
fn f16_values(n: usize, seed: u64) -> Vec<f32> {
    SeededRng::new(seed)
        .normal_vec(n)
        .into_iter()
        .map(|v| half::f16::from_f32(v * 100.0).to_f32())
        .collect()
}

/// The widening kernel (f16 weights on adapters without `shader-f16`) is exact: odd counts,
/// one value, a count past one row of the 2-D dispatch, and a transposed view.
#[test]
fn widening_f16_weights_is_exact() {
    let device = device();
    for n in [1usize, 3, 64, 129, 2 * 64 * 65_535 + 3] {
        let values = f16_values(n, n as u64);
        let wide = tav_core::layers::in_dtype_of(
            f16_tensor(&values, [n], &device),
            burn::tensor::DType::F32,
        );
        assert_eq!(wide.dtype(), burn::tensor::DType::F32);
        let out = to_vec(wide);
        let wrong = out.iter().zip(&values).filter(|(a, b)| a != b).count();
        println!("widen {n} values: {wrong} differ");
        assert_eq!(wrong, 0, "{n} values: {wrong} widened wrongly");
    }
    // A linear weight is a transposed view of its stored [out, in] tensor.
    let (rows, cols) = (37, 5);
    let values = f16_values(rows * cols, 7);
    let stored = f16_tensor(&values, [rows, cols], &device);
    let out = to_vec(tav_core::layers::in_dtype_of(
        stored.transpose(),
        burn::tensor::DType::F32,
    ));
    let expected: Vec<f32> = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| (r, c)))
        .map(|(r, c)| values[r * cols + c])
        .collect();
    assert_eq!(out, expected, "the transposed view survives widening");
}

/// A widened frozen weight inside an autodiff graph: the trainable input still gets its
/// gradient, and the weight none.
#[test]
fn widened_f16_weight_in_a_tuning_graph() {
    let ad = device().autodiff();
    let values = f16_values(12, 3);
    let weight =
        tav_core::layers::in_dtype_of(f16_tensor(&values, [3, 4], &ad), burn::tensor::DType::F32);
    let x = Tensor::<2>::ones([2, 3], &ad).require_grad();
    let grads = x.clone().matmul(weight).sum().backward();
    let d_x = to_vec(x.grad(&grads).expect("x has a gradient"));
    // d(sum(x W))/dx[i, k] = sum_j W[k, j].
    let expected: Vec<f32> = (0..2)
        .flat_map(|_| (0..3).map(|k| values[k * 4..k * 4 + 4].iter().sum::<f32>()))
        .collect();
    assert!(rel_error(&d_x, &expected) < 1e-6, "{d_x:?} vs {expected:?}");
}

/// One point of the sweep: `[(B·F), L, H·D]` projections through the model's own path.
#[derive(Debug, Clone, Copy)]
struct Point {
    videos: usize,
    frames: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    temporal: bool,
}

impl Point {
    fn shape(&self) -> Shape {
        Shape {
            videos: self.videos,
            frames: self.frames,
            tokens: self.tokens,
            heads: self.heads,
            head_dim: self.head_dim,
            mode: if self.temporal {
                AttentionMode::Temporal
            } else {
                AttentionMode::SparseCausal
            },
        }
    }
}

/// The sweep: every head size SD-family models use (and the toy/test sizes), 1 to 24
/// frames with odd counts, token counts of non-square latents (h·w with h ≠ w), one video
/// and two (a tuning batch of 2, and the guidance batch), both attention modes (alternating
/// along the frames; the long rows in both). Sizes are
/// kept small enough for lavapipe; what varies is what the kernels index by.
fn sweep() -> Vec<Point> {
    let head_dims = [8, 16, 32, 40, 64, 80, 160];
    let frames = [1, 2, 3, 4, 5, 7, 8, 13, 16, 24];
    // (h, w) of the latent grid at one UNet level: none square, some not multiples of 8.
    let grids = [(3, 5), (4, 6), (2, 9), (5, 7), (6, 10)];
    let mut points = Vec::new();
    for (i, &head_dim) in head_dims.iter().enumerate() {
        for (j, &f) in frames.iter().enumerate() {
            // Walk the grids and head counts with the frames so every pairing is different.
            let (h, w) = grids[(i + j) % grids.len()];
            let heads = [1, 2, 3, 8][(i + 2 * j) % 4];
            let videos = 1 + (i + j) % 2;
            // The modes alternate along the frames (every head size meets both, at five frame
            // counts each): half the points of both modes everywhere, for CI's time.
            let temporal = (i + j / 2) % 2 == 1;
            points.push(Point {
                videos,
                frames: f,
                tokens: h * w,
                heads,
                head_dim,
                temporal,
            });
        }
    }
    // Rows with long loops: past llvmpipe's shared budget of 65,535 loop iterations per
    // invocation, where the kernels must run in passes.
    for (videos, frames, tokens, heads, head_dim) in [
        (1, 1, 12 * 20, 1, 160),
        (2, 4, 6 * 10, 1, 160),
        (1, 2, 16 * 40, 2, 40),
        (1, 3, 10 * 24, 1, 80),
    ] {
        for temporal in [false, true] {
            points.push(Point {
                videos,
                frames,
                tokens,
                heads,
                head_dim,
                temporal,
            });
        }
    }
    points
}

/// The kernels as the model calls them (burn backend extension, autodiff, hand-written
/// backward) against the plain path, output and all three gradients.
fn check_through_model_path(point: Point, device: &Device) -> [(&'static str, f64); 4] {
    let shape = point.shape();
    let n = shape.elements();
    let mut rng = SeededRng::new(7 * n as u64 + point.frames as u64);
    let (q, k, v, d_out) = (
        rng.normal_vec(n),
        rng.normal_vec(n),
        rng.normal_vec(n),
        rng.normal_vec(n),
    );
    let reference = plain(&shape, &q, &k, &v, &d_out, device);
    let ad = device.clone().autodiff();
    let dims = vec![
        point.videos * point.frames,
        point.tokens,
        point.heads * point.head_dim,
    ];
    let leaf = |data: &[f32]| {
        HostTensor::new(dims.clone(), data.to_vec())
            .to_device::<3>(&ad)
            .require_grad()
    };
    let (qt, kt, vt) = (leaf(&q), leaf(&k), leaf(&v));
    let out = tav_core::kernels::video_attention(
        qt.clone(),
        kt.clone(),
        vt.clone(),
        point.frames,
        point.heads,
        point.temporal,
    );
    let weight: Tensor<3> = HostTensor::new(dims.clone(), d_out).to_device(&ad);
    let grads = (out.clone() * weight).sum().backward();
    let grad = |t: &Tensor<3>| to_vec(t.grad(&grads).expect("gradient"));
    [
        ("out", rel_error(&to_vec(out.inner()), &reference.out)),
        ("dq", rel_error(&grad(&qt), &reference.d_q)),
        ("dk", rel_error(&grad(&kt), &reference.d_k)),
        ("dv", rel_error(&grad(&vt), &reference.d_v)),
    ]
}

/// The sweep through the model's path: every point within 1e-4 in f32.
#[test]
fn kernel_sweep_matches_plain_path_through_autodiff() {
    let device = device();
    let mut failures = Vec::new();
    let points = sweep();
    for point in &points {
        let errors = check_through_model_path(*point, &device);
        let worst = errors.iter().map(|(_, e)| *e).fold(0.0, f64::max);
        println!("{point:?}: {errors:?}");
        if worst > 1e-4 {
            failures.push(format!("{point:?}: {errors:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} sweep points differ from the plain path:\n{}",
        failures.len(),
        points.len(),
        failures.join("\n")
    );
}

/// Naive f64 sparse-causal attention gradients (videos 1, heads 1) for debugging.
fn naive(
    frames: usize,
    l: usize,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let at = |f: usize, i: usize| (f * l + i) * d;
    let scale = (d as f64).powf(-0.5);
    let mut dk = vec![0f64; frames * l * d];
    let mut dv = vec![0f64; frames * l * d];
    for f in 0..frames {
        let prev = f.saturating_sub(1);
        let keys: Vec<(usize, usize)> = (0..l)
            .map(|j| (0, j))
            .chain((0..l).map(|j| (prev, j)))
            .collect();
        for i in 0..l {
            let s: Vec<f64> = keys
                .iter()
                .map(|&(g, j)| {
                    (0..d)
                        .map(|x| q[at(f, i) + x] as f64 * k[at(g, j) + x] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            let dp: Vec<f64> = keys
                .iter()
                .map(|&(g, j)| {
                    (0..d)
                        .map(|x| dout[at(f, i) + x] as f64 * v[at(g, j) + x] as f64)
                        .sum()
                })
                .collect();
            let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (n, &(g, j)) in keys.iter().enumerate() {
                let ds = p[n] * (dp[n] - delta);
                for x in 0..d {
                    dv[at(g, j) + x] += p[n] * dout[at(f, i) + x] as f64;
                    dk[at(g, j) + x] += ds * q[at(f, i) + x] as f64 * scale;
                }
            }
        }
    }
    (dk, dv)
}

/// Rows whose loops run past llvmpipe's 65,535 shared loop iterations (one pass would be
/// cut short there and give wrong numbers silently): the kernels, split into passes, against
/// an f64 loop written from the definition, so burn's autodiff is not the only judge. The
/// tiled kernels (which need far fewer passes) also run with a budget lowered to make them
/// take many passes on any adapter, and the per-row kernels (temporal attention's, and the
/// tiled kernels' second reference) run the same rows.
#[test]
fn long_rows_match_a_naive_reference() {
    use tav_shaders::Tiling;
    let device = device();
    let mut runner = KernelRunner::new().unwrap();
    let adapter = runner.capabilities;
    let no_subgroups = Capabilities {
        subgroup_size: None,
        ..adapter
    };
    let low_budget = Capabilities {
        loop_budget: Some(2000),
        ..adapter
    };
    for (frames, tokens, head_dim) in [(1, 240, 160), (4, 60, 160), (2, 512, 40), (3, 300, 64)] {
        let shape = Shape {
            videos: 1,
            frames,
            tokens,
            heads: 1,
            head_dim,
            mode: AttentionMode::SparseCausal,
        };
        let n = shape.elements();
        let mut rng = SeededRng::new(n as u64);
        let (q, k, v, d) = (
            rng.normal_vec(n),
            rng.normal_vec(n),
            rng.normal_vec(n),
            rng.normal_vec(n),
        );
        let (dk, dv) = naive(frames, tokens, head_dim, &q, &k, &v, &d);
        let as_f32 = |x: Vec<f64>| -> Vec<f32> { x.into_iter().map(|v| v as f32).collect() };
        let (dk, dv) = (as_f32(dk), as_f32(dv));
        let reference = plain(&shape, &q, &k, &v, &d, &device);
        for (tiling, capabilities) in [
            (Tiling::Tiled, adapter),
            (Tiling::Tiled, no_subgroups),
            (Tiling::Tiled, low_budget),
            (Tiling::PerRow, adapter),
        ] {
            runner.tiling = tiling;
            runner.capabilities = capabilities;
            let budget = capabilities.loop_budget;
            let passes = shape_info_passes(&shape, budget);
            let lanes = capabilities.lanes(tav_shaders::Kernel::TiledForward, head_dim);
            let inputs = Qkv {
                q: &q,
                k: &k,
                v: &v,
            };
            let forward = runner.forward(&shape, inputs, false).unwrap();
            let back = runner
                .backward(&shape, inputs, &forward, &d, false)
                .unwrap();
            let errors = [
                ("out", rel_error(&forward.out, &reference.out)),
                ("dq", rel_error(&back.d_q, &reference.d_q)),
                ("dk", rel_error(&back.d_k, &dk)),
                ("dv", rel_error(&back.d_v, &dv)),
            ];
            println!(
                "{frames} frames × {tokens} tokens, head {head_dim}, {tiling:?}, budget {budget:?} \
                 (tiled forward: {passes} passes at this budget, {lanes} lanes): {errors:?}"
            );
            for (name, err) in errors {
                assert!(
                    err < 1e-5,
                    "{name} {err:.2e} at {shape:?} {tiling:?} {capabilities:?}"
                );
            }
        }
    }
}

/// Passes of the tiled forward kernel at `shape` within `budget`.
fn shape_info_passes(shape: &Shape, budget: Option<u32>) -> usize {
    shape
        .info(65_535)
        .passes(tav_shaders::Kernel::TiledForward, budget)
        .len()
}

/// erf in f64 (Taylor series below 3, continued fraction for erfc above): the reference the
/// GEGLU kernels' f32 approximation is held to.
fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 3.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        let mut fraction = a;
        for k in (1..80).rev() {
            fraction = a + (k as f64 / 2.0) / fraction;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * fraction)
    };
    value.copysign(x)
}

/// GEGLU in f64 on the host: the output, and the projection's gradient for `d_out`.
fn geglu_reference(projected: &[f32], d_out: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = projected.len() / (2 * width);
    let mut out = vec![0f32; rows * width];
    let mut d_projected = vec![0f32; rows * 2 * width];
    for r in 0..rows {
        for c in 0..width {
            let (h, g) = (
                projected[2 * r * width + c] as f64,
                projected[(2 * r + 1) * width + c] as f64,
            );
            let cdf = 0.5 * (1.0 + erf64(g / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * g * g).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let d = d_out[r * width + c] as f64;
            out[r * width + c] = (h * g * cdf) as f32;
            d_projected[2 * r * width + c] = (d * g * cdf) as f32;
            d_projected[(2 * r + 1) * width + c] = (d * h * (cdf + g * pdf)) as f32;
        }
    }
    (out, d_projected)
}

/// GEGLU as one op (`tav_core::kernels::geglu`, forward and backward kernels through
/// autodiff) against GELU's exact definition in f64, at widths that are odd, SD's (1,280),
/// and past one row of the 2-D dispatch; and in f16 storage. burn's composed ops are printed
/// beside it: their backward is GELU's tanh approximation's.
#[test]
fn fused_geglu_matches_exact_gelu_forward_and_backward() {
    let device = device();
    let ad = device.clone().autodiff();
    for (rows, width) in [
        (1usize, 1usize),
        (3, 7),
        (130, 96),
        (37, 1280),
        (4100, 1040),
    ] {
        let mut rng = SeededRng::new((rows * width) as u64);
        let projected: Vec<f32> = rng
            .normal_vec(rows * 2 * width)
            .iter()
            .map(|v| 2.0 * v)
            .collect();
        let d_out = rng.normal_vec(rows * width);
        let (expected, expected_grad) = geglu_reference(&projected, &d_out, width);
        let leaf = HostTensor::new(vec![1, rows, 2 * width], projected.clone())
            .to_device::<3>(&ad)
            .require_grad();
        let weight: Tensor<3> = HostTensor::new(vec![1, rows, width], d_out.clone()).to_device(&ad);
        let out = tav_core::kernels::geglu(leaf.clone());
        let grads = (out.clone() * weight.clone()).sum().backward();
        let out_err = rel_error(&to_vec(out.inner()), &expected);
        let grad_err = rel_error(&to_vec(leaf.grad(&grads).unwrap()), &expected_grad);
        // burn's composed ops, for the record.
        let composed_leaf = HostTensor::new(vec![1, rows, 2 * width], projected.clone())
            .to_device::<3>(&ad)
            .require_grad();
        let [hidden, gate] = composed_leaf.clone().chunk(2, 2).try_into().unwrap();
        let composed = hidden * burn::tensor::activation::gelu(gate);
        let grads = (composed * weight).sum().backward();
        let composed_grad_err =
            rel_error(&to_vec(composed_leaf.grad(&grads).unwrap()), &expected_grad);
        println!(
            "geglu {rows}×{width}: out {out_err:.2e}, grad {grad_err:.2e} (burn's ops: grad {composed_grad_err:.2e})"
        );
        assert!(out_err < 1e-5, "{rows}×{width}: output {out_err:.2e}");
        assert!(grad_err < 1e-5, "{rows}×{width}: gradient {grad_err:.2e}");

        if tav_core::precision::supports_f16(&device) && rows * width < 1 << 16 {
            let rounded: Vec<f32> = projected
                .iter()
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect();
            let (expected, _) = geglu_reference(&rounded, &d_out, width);
            let out = tav_core::kernels::geglu(f16_tensor(&rounded, [1, rows, 2 * width], &device));
            assert_eq!(out.dtype(), burn::tensor::DType::F16);
            let err = rel_error(
                &to_vec(tav_core::layers::in_dtype_of(out, burn::tensor::DType::F32)),
                &expected,
            );
            println!("geglu {rows}×{width} f16: out {err:.2e}");
            assert!(err < 2e-3, "{rows}×{width} f16: output {err:.2e}");
        }
    }
}

/// One convolution of the test: input `[N, C_in, H, W]`, `c_out` square `k`×`k` filters,
/// stride and padding (top, left, bottom, right).
#[derive(Debug, Clone, Copy)]
struct ConvCase {
    dims: [usize; 4],
    c_out: usize,
    k: usize,
    stride: usize,
    padding: [usize; 4],
}

impl ConvCase {
    fn out_dims(&self) -> [usize; 4] {
        let [n, _, h, w] = self.dims;
        let [top, left, bottom, right] = self.padding;
        [
            n,
            self.c_out,
            (h + top + bottom - self.k) / self.stride + 1,
            (w + left + right - self.k) / self.stride + 1,
        ]
    }
}

/// f64 convolution from the definition (NCHW): the output and the input's gradient for an
/// output gradient `d_out`.
fn conv_reference(
    case: &ConvCase,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    d_out: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let [n, c_in, h, w] = case.dims;
    let [_, _, oh, ow] = case.out_dims();
    let (k, stride) = (case.k, case.stride);
    let [top, left, _, _] = case.padding;
    let mut out = vec![0f64; n * case.c_out * oh * ow];
    let mut d_x = vec![0f64; x.len()];
    for b in 0..n {
        for (co, &bias_co) in bias.iter().enumerate() {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = ((b * case.c_out + co) * oh + oy) * ow + ox;
                    let mut acc = bias_co as f64;
                    for ci in 0..c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                                if iy < top || ix < left || iy - top >= h || ix - left >= w {
                                    continue;
                                }
                                let xi = ((b * c_in + ci) * h + iy - top) * w + ix - left;
                                let wi = ((co * c_in + ci) * k + ky) * k + kx;
                                acc += x[xi] as f64 * weight[wi] as f64;
                                d_x[xi] += d_out[o] as f64 * weight[wi] as f64;
                            }
                        }
                    }
                    out[o] = acc;
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(out), f(d_x))
}

/// tav's convolution kernel (f16 convolutions summed in f32, no f32 copy), forward and the
/// input's gradient through autodiff, against an f64 loop: 3×3 and 1×1 kernels, stride 1 and
/// 2, symmetric and bottom/right-only padding (the VAE's downsampler), odd sizes, f32 and f16
/// storage.
#[test]
fn convolution_kernel_sums_in_f32_forward_and_input_gradient() {
    use tav_core::kernels::{ConvSpec, conv2d_f32_sum, conv2d_supported};
    let device = device();
    let ad = device.clone().autodiff();
    let case = |dims, c_out, k, stride, padding| ConvCase {
        dims,
        c_out,
        k,
        stride,
        padding,
    };
    let cases = [
        case([2, 3, 7, 9], 5, 3, 1, [1, 1, 1, 1]),
        case([1, 4, 9, 6], 3, 3, 2, [1, 1, 1, 1]),
        case([1, 5, 8, 8], 4, 3, 2, [0, 0, 1, 1]),
        case([2, 6, 5, 7], 7, 1, 1, [0, 0, 0, 0]),
        case([1, 70, 6, 5], 9, 3, 1, [1, 1, 1, 1]),
    ];
    for (i, case) in cases.iter().enumerate() {
        let [n, c_in, h, w] = case.dims;
        let (c_out, k) = (case.c_out, case.k);
        let out_dims = case.out_dims();
        let round = |v: Vec<f32>| -> Vec<f32> {
            v.into_iter()
                .map(|x| half::f16::from_f32(x).to_f32())
                .collect()
        };
        let mut rng = SeededRng::new(100 + i as u64);
        let x = round(rng.normal_vec(n * c_in * h * w));
        let weight = round(rng.normal_vec(c_out * c_in * k * k));
        let bias = round(rng.normal_vec(c_out));
        let d_out = round(rng.normal_vec(out_dims.iter().product()));
        let (out_ref, d_x_ref) = conv_reference(case, &x, &weight, &bias, &d_out);
        let spec = ConvSpec {
            stride: case.stride,
            padding: case.padding,
        };
        for f16 in [false, true] {
            let (dtype, tol) = if f16 {
                (burn::tensor::DType::F16, 5e-4)
            } else {
                (burn::tensor::DType::F32, 1e-5)
            };
            let tensor = |v: &[f32], shape: Vec<usize>| -> Tensor<4> {
                let mut shape = shape;
                shape.resize(4, 1);
                HostTensor::new(shape, v.to_vec())
                    .to_device::<4>(&ad)
                    .cast(dtype)
            };
            let xt = tensor(&x, case.dims.to_vec()).require_grad();
            let wt = tensor(&weight, vec![c_out, c_in, k, k]);
            let bt: Tensor<1> = tensor(&bias, vec![c_out]).reshape([c_out]);
            assert!(conv2d_supported(&xt, &wt, spec), "{case:?}");
            let out = conv2d_f32_sum(xt.clone(), wt, bt, spec);
            assert_eq!(out.dims(), out_dims, "{case:?}");
            let rt = tensor(&d_out, out_dims.to_vec());
            let grads = (out.clone().cast(burn::tensor::DType::F32)
                * rt.cast(burn::tensor::DType::F32))
            .sum()
            .backward();
            let d_x = xt.grad(&grads).expect("the input's gradient");
            let as_f32 = |t: Tensor<4>| to_vec(t.cast(burn::tensor::DType::F32));
            let errors = [
                rel_error(&as_f32(out.inner()), &out_ref),
                rel_error(&as_f32(d_x), &d_x_ref),
            ];
            println!("{case:?} f16={f16}: out, d_x rel.err {errors:?}");
            assert!(
                errors.iter().all(|e| *e <= tol),
                "{case:?} f16={f16}: {errors:?}"
            );
        }
    }
}
