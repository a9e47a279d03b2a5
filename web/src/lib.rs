//! tav in the browser: the engine behind the `tav-web` package. JavaScript streams a packed
//! model in (`beginModel`, `feedShard`, `endShard`, `setFile`, `finishModel`), then calls
//! `tune`, `invert` and `edit`; every long call is async, reports progress, and can be
//! cancelled. `web/js/tav.js` wraps this in the documented API (fetching, caching).

mod frames;
mod js;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use js_sys::{Float32Array, Object, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use tav_core::TavError;
use tav_core::checkpoint::{MemoryFiles, Models};
use tav_core::delta::{TuneMeta, TunedWeights, apply_tuned};
use tav_core::edit::{Denoiser, Guidance, decode_video, guidance_context};
use tav_core::limits::DeviceLimits;
use tav_core::progress::silent;
use tav_core::schedule::Ddim;
use tav_core::stream::{
    Manifest, ShardStream, StreamedWeights, build_models, sha256_hex, wait_for_gpu,
};
use tav_core::transformer::VideoAttentionOptions;
use tav_core::tune::{
    Flow, StepDraws, StepReport, TuneBatch, TuneSettings, Tuner, TuningRun, clip_latents, seeded,
};
use tav_core::unet::UNet3D;
use tav_core::vae::Posterior;
use tav_core::weights::SafetensorsFile;

use crate::frames::{FrameSize, to_pixels, to_rgba};
use crate::js::{JsResult, Options, error, report, set, tav_error};

/// A model being streamed in.
struct Loading {
    manifest: Manifest,
    weights: StreamedWeights,
    /// The shard being fed, by index.
    current: Option<(usize, ShardStream)>,
    files: MemoryFiles,
}

/// The clip the model was tuned on, as latents.
struct TunedClip {
    posterior: Posterior,
}

#[derive(Default)]
struct State {
    loading: Option<Loading>,
    models: Option<Rc<Models>>,
    /// The tuned UNet (the base one until `tune` or `importTuned`).
    unet: Option<UNet3D>,
    meta: Option<TuneMeta>,
    clip: Option<TunedClip>,
    /// The inverted latents (DDIM inversion's last step), where edits start.
    inverted: Option<Tensor<5>>,
}

struct Inner {
    device: Device,
    adapter: String,
    shader_f16: bool,
    max_binding: u64,
    cancelled: Cell<bool>,
    busy: Cell<bool>,
    state: RefCell<State>,
}

/// The tav engine: one GPU device, one model, one tuned clip at a time.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

/// Current size of the wasm heap in bytes (it only grows, so this is also its peak).
#[wasm_bindgen(js_name = wasmMemoryBytes)]
pub fn wasm_memory_bytes() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) * 65536) as f64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0.0
    }
}

/// The page's GPU: burn registers one device per page, so every engine shares it.
#[derive(Clone)]
struct Gpu {
    device: Device,
    adapter: String,
    shader_f16: bool,
    max_binding: u64,
}

thread_local! {
    static GPU: RefCell<Option<Gpu>> = const { RefCell::new(None) };
}

impl Gpu {
    async fn open() -> JsResult<Gpu> {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| {
                error(format!(
                    "WebGPU is not available: the browser offers no usable GPU adapter ({e:?})"
                ))
            })?;
        let info = setup.adapter.get_info();
        // cubecl opens the device with every feature the adapter has, subgroups included.
        let subgroups = setup
            .device
            .features()
            .contains(burn::tensor::wgpu::wgpu::Features::SUBGROUP);
        tav_core::kernels::use_subgroups(&device, subgroups.then_some(info.subgroup_min_size));
        Ok(Gpu {
            shader_f16: device.supports_dtype(DType::F16),
            device,
            adapter: if info.name.is_empty() {
                // Browsers may hide the adapter's name.
                format!("{:?} adapter", info.backend)
            } else {
                format!("{} ({:?})", info.name, info.backend)
            },
            // burn binds each tensor whole: the smaller of the two limits bounds one tensor.
            max_binding: DeviceLimits::from_wgpu(
                setup.device.limits().max_buffer_size,
                setup.device.limits().max_storage_buffer_binding_size,
            )
            .max_buffer_bytes,
        })
    }
}

fn webgpu_available() -> bool {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into());
    navigator
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()))
        .is_ok_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

#[wasm_bindgen]
impl Engine {
    /// Opens the GPU. Rejects when the browser has no WebGPU or no adapter.
    pub async fn create() -> JsResult<Engine> {
        if !webgpu_available() {
            return Err(error(
                "WebGPU is not available in this browser: use a recent Chrome, Edge or Safari \
                 (or Firefox with WebGPU enabled), on a machine with a supported GPU",
            ));
        }
        let gpu = match GPU.with(|g| g.borrow().clone()) {
            Some(gpu) => gpu,
            None => {
                let gpu = Gpu::open().await?;
                GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
                gpu
            }
        };
        Ok(Engine {
            inner: Rc::new(Inner {
                device: gpu.device,
                adapter: gpu.adapter,
                shader_f16: gpu.shader_f16,
                max_binding: gpu.max_binding,
                cancelled: Cell::new(false),
                busy: Cell::new(false),
                state: RefCell::default(),
            }),
        })
    }

    /// `{adapter, shaderF16, computeDtype, storageDtype, maxStorageBufferBindingSize}`, and
    /// `model` once one is loaded.
    pub fn info(&self) -> JsValue {
        let o = Object::new();
        set(&o, "adapter", self.inner.adapter.as_str());
        set(&o, "shaderF16", self.inner.shader_f16);
        // With shader-f16, weights stay f16 and everything computes in f16 (tuning in mixed
        // precision); without it, arithmetic is f32 on the GPU.
        set(
            &o,
            "computeDtype",
            if self.inner.shader_f16 { "f16" } else { "f32" },
        );
        // Weights stay f16 in GPU memory on every adapter (widened where used without f16).
        set(&o, "storageDtype", "f16");
        set(
            &o,
            "maxStorageBufferBindingSize",
            self.inner.max_binding as f64,
        );
        if let Some(models) = &self.inner.state.borrow().models {
            let m = Object::new();
            set(&m, "latentChannels", models.unet_config.in_channels as u32);
            set(
                &m,
                "parameters",
                models
                    .unet
                    .params
                    .iter()
                    .map(|e| e.shape.iter().product::<usize>())
                    .sum::<usize>() as f64,
            );
            set(&o, "model", m);
        }
        o.into()
    }

    /// Starts streaming the model whose `manifest.json` is `manifest`.
    #[wasm_bindgen(js_name = beginModel)]
    pub fn begin_model(&self, manifest: &str) -> JsResult<()> {
        let manifest = Manifest::parse(manifest).map_err(tav_error)?;
        // Without shader-f16 a weight is widened to f32 where used: 4 bytes a value then.
        let bytes_per_value = if self.inner.shader_f16 { 2 } else { 4 };
        let needed = manifest.largest_tensor() * bytes_per_value;
        if needed > self.inner.max_binding {
            return Err(error(format!(
                "adapter limits too small: this model needs {:.0} MiB in one storage binding, \
                 this adapter allows {:.0} MiB",
                needed as f64 / 1048576.0,
                self.inner.max_binding as f64 / 1048576.0
            )));
        }
        let mut state = self.inner.state.borrow_mut();
        *state = State::default();
        state.loading = Some(Loading {
            weights: StreamedWeights::new(&self.inner.device),
            files: MemoryFiles {
                name: manifest.name.clone(),
                ..Default::default()
            },
            manifest,
            current: None,
        });
        Ok(())
    }

    /// Feeds the next bytes of shard `index` (in the manifest's order); tensors completed by
    /// them go to GPU memory now. Starting a shard again discards what it had fed.
    #[wasm_bindgen(js_name = feedShard)]
    pub fn feed_shard(&self, index: usize, chunk: &[u8]) -> JsResult<()> {
        let mut state = self.inner.state.borrow_mut();
        let loading = loading(&mut state)?;
        let same = matches!(&loading.current, Some((i, _)) if *i == index);
        if !same {
            let shard = loading
                .manifest
                .shards
                .get(index)
                .ok_or_else(|| error(format!("no shard {index} in the manifest")))?;
            loading.current = Some((index, ShardStream::new(shard)));
        }
        let (_, stream) = loading.current.as_mut().expect("set above");
        stream.feed(chunk, &mut loading.weights).map_err(tav_error)
    }

    /// Ends shard `index`: all its bytes arrived and its SHA-256 matches (else rejects; feed
    /// the shard again from its start). Resolves once the GPU holds the shard's tensors, so
    /// host memory holds at most one shard's uploads at a time.
    #[wasm_bindgen(js_name = endShard)]
    pub fn end_shard(&self, index: usize) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let last = {
                let mut state = inner.state.borrow_mut();
                let loading = loading(&mut state)?;
                match loading.current.take() {
                    Some((i, stream)) if i == index => stream.finish().map_err(tav_error)?,
                    _ => return Err(error(format!("shard {index} was not being fed"))),
                }
                loading.weights.take_upload_marker()
            };
            if let Some(last) = last {
                wait_for_gpu(last, "uploading weights")
                    .await
                    .map_err(tav_error)?;
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// A small file of the pack (the tokenizer), checked against the manifest.
    #[wasm_bindgen(js_name = setFile)]
    pub fn set_file(&self, path: &str, bytes: Vec<u8>) -> JsResult<()> {
        let mut state = self.inner.state.borrow_mut();
        let loading = loading(&mut state)?;
        let entry = loading
            .manifest
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| error(format!("`{path}` is not a file of this model")))?;
        let got = sha256_hex(&bytes);
        if got != entry.sha256 {
            return Err(error(format!(
                "{path} has SHA-256 {got}, the manifest says {}: the download is corrupt",
                entry.sha256
            )));
        }
        loading.files.files.insert(path.to_string(), bytes);
        Ok(())
    }

    /// Builds the models once every shard and file is in. Returns the peak host bytes held
    /// while streaming (one tensor at a time).
    #[wasm_bindgen(js_name = finishModel)]
    pub fn finish_model(&self) -> JsResult<f64> {
        let mut state = self.inner.state.borrow_mut();
        let mut loading = state
            .loading
            .take()
            .ok_or_else(|| error("no model is being loaded: call beginModel first"))?;
        let peak = loading.weights.peak_host_bytes as f64;
        let models = build_models(&loading.manifest, &mut loading.weights, &loading.files, 0)
            .map_err(tav_error)?;
        state.unet = Some(models.unet.clone());
        state.models = Some(Rc::new(models));
        Ok(peak)
    }

    /// Makes the running long call stop at its next step and reject with "cancelled".
    pub fn cancel(&self) {
        self.inner.cancelled.set(true);
    }

    /// Tunes on `frames` (RGBA bytes, `count` frames of `width`×`height`; or a Float32Array
    /// of planar `[count, 3, height, width]` pixels in [-1, 1], for exact inputs) with `prompt`.
    /// Options: `steps` (default 500), `learningRate` (3e-5), `seed` (33), `onProgress`,
    /// `draws` (injected random draws: `[{vaeEps, noise, timestep}]` per step). Resolves to
    /// the losses, one per step.
    pub fn tune(
        &self,
        frames: JsValue,
        width: usize,
        height: usize,
        count: usize,
        prompt: String,
        options: JsValue,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _guard = inner.start()?;
            let losses = inner
                .tune(
                    frames,
                    FrameSize {
                        count,
                        width,
                        height,
                    },
                    prompt,
                    Options::new(options),
                )
                .await?;
            Ok(Float32Array::from(losses.as_slice()).into())
        })
    }

    /// DDIM-inverts the tuned clip with the empty prompt. Options: `steps` (50),
    /// `onProgress`.
    pub fn invert(&self, options: JsValue) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _guard = inner.start()?;
            inner.invert(Options::new(options)).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Samples an edited video for `prompt` from the inverted latents. Options: `steps`
    /// (50), `guidance` (12.5), `guidanceRescale` (0: none, as the reference), `onProgress`.
    /// Resolves to `{frames, width, height, count}`.
    pub fn edit(&self, prompt: String, options: JsValue) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _guard = inner.start()?;
            inner.edit(prompt, Options::new(options)).await
        })
    }

    /// The tuned weights as a safetensors file (loads in `tav edit --tuned` too).
    #[wasm_bindgen(js_name = exportTuned)]
    pub fn export_tuned(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _guard = inner.start()?;
            let bytes = inner.export_tuned().await?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// Loads tuned weights exported by `exportTuned` or written by `tav tune`.
    #[wasm_bindgen(js_name = importTuned)]
    pub fn import_tuned(&self, bytes: Vec<u8>) -> JsResult<()> {
        let file = SafetensorsFile::from_bytes("tuned weights", bytes).map_err(tav_error)?;
        let tuned = TunedWeights::from_file(&file).map_err(tav_error)?;
        let mut state = self.inner.state.borrow_mut();
        let models = state
            .models
            .clone()
            .ok_or_else(|| error("no model loaded"))?;
        tuned
            .check_base(models.base_fingerprint(), "tuned weights")
            .map_err(tav_error)?;
        let unet = apply_tuned(models.unet.clone(), &tuned, "tuned weights").map_err(tav_error)?;
        state.unet = Some(unet);
        state.meta = Some(tuned.meta);
        state.inverted = None;
        Ok(())
    }
}

fn loading(state: &mut State) -> JsResult<&mut Loading> {
    state
        .loading
        .as_mut()
        .ok_or_else(|| error("no model is being loaded: call beginModel first"))
}

/// Clears `busy` when a long call ends, however it ends.
struct Busy(Rc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

impl Inner {
    fn start(self: &Rc<Self>) -> JsResult<Busy> {
        if self.busy.replace(true) {
            return Err(error(
                "the engine is busy with another call: wait for it or cancel it",
            ));
        }
        self.cancelled.set(false);
        Ok(Busy(self.clone()))
    }

    fn check_cancelled(&self) -> JsResult<()> {
        if self.cancelled.get() {
            return Err(error("cancelled"));
        }
        Ok(())
    }

    fn models(&self) -> JsResult<Rc<Models>> {
        self.state
            .borrow()
            .models
            .clone()
            .ok_or_else(|| error("no model loaded: load one first"))
    }

    fn embed(&self, models: &Models, prompt: &str) -> JsResult<Tensor<3>> {
        let ids = models.tokenizer.encode(prompt).map_err(tav_error)?;
        models
            .text_encoder
            .forward(&[ids], &self.device)
            .map_err(tav_error)
    }

    /// The adapter's limits, which size every chunk of work.
    fn limits(&self) -> DeviceLimits {
        DeviceLimits {
            max_buffer_bytes: self.max_binding,
            memory_bytes: None,
        }
    }

    /// Whether tuning at `size` recomputes its blocks in backward: as `tav`'s
    /// `--recompute auto`, when the step keeping every activation is planned over
    /// [`tav_core::plan::RECOMPUTE_ABOVE_BYTES`] (every Stable Diffusion clip, none of the tiny
    /// models, whose steps it would only slow).
    fn tuning_needs_recompute(&self, models: &Models, size: FrameSize) -> JsResult<bool> {
        use tav_core::plan::{JobShape, PlanInput, plan, recompute_needed};
        let job = JobShape {
            frames: size.count,
            height: size.height,
            width: size.width,
            f16: true,
            kernels: true,
            recompute: false,
        };
        let input = PlanInput::new(
            &models.unet_config,
            &models.vae_config,
            &models.clip_config,
            job,
            &self.device,
        )
        .map_err(tav_error)?;
        Ok(recompute_needed(&plan(&input, &self.limits())))
    }

    fn attention(&self) -> VideoAttentionOptions {
        VideoAttentionOptions {
            kernels: true,
            f16_compute: self.shader_f16,
            max_buffer_bytes: self.max_binding,
            ..VideoAttentionOptions::default()
        }
    }

    /// Waits for the GPU to reach `t` (a one-value readback): progress is then real, and
    /// the page stays responsive between steps.
    async fn settle(&self, t: &Tensor<5>) -> JsResult<()> {
        wait_for_gpu(t.clone(), "a denoising step")
            .await
            .map_err(tav_error)
    }

    async fn tune(
        &self,
        frames: JsValue,
        size: FrameSize,
        prompt: String,
        options: Options,
    ) -> JsResult<Vec<f32>> {
        let pixels = frames_to_pixels(frames, size, &self.device)?;
        let models = self.models()?;
        let steps = options.steps("steps", tav_core::tune::REFERENCE_STEPS)?;
        let seed = options
            .number("seed")?
            .map_or(tav_core::tune::REFERENCE_SEED, |s| s as u64);
        let defaults = TuneSettings::default();
        let settings = TuneSettings {
            learning_rate: options
                .number("learningRate")?
                .unwrap_or(defaults.learning_rate),
            ..defaults
        };
        if settings.learning_rate <= 0.0 {
            return Err(error(format!(
                "option `learningRate` is {}: it must be above 0 (the reference: 3e-5)",
                settings.learning_rate
            )));
        }
        let injected = injected_draws(&options, steps)?;
        let on_progress = options.function("onProgress");

        let posterior = models
            .vae
            .encode_frames(pixels, &self.limits(), &mut silent)
            .map_err(tav_error)?;
        let batch = TuneBatch {
            posterior: posterior.clone(),
            context: self.embed(&models, &prompt)?,
            scaling_factor: models.vae.scaling_factor,
            attention: VideoAttentionOptions {
                recompute: self.tuning_needs_recompute(&models, size)?,
                ..self.attention()
            },
        };
        let latent_frames = posterior.mean.dims();
        let mut tuner = Tuner::new(&models.unet, settings);
        let mut losses = Vec::with_capacity(steps);
        let from_seed = seeded(seed, &batch, &models.schedule, &self.device);
        let draws = |step: usize| match &injected {
            Some(list) => list[step].to_device(latent_frames, &self.device),
            None => from_seed(step),
        };
        let run = TuningRun {
            batch: &batch,
            schedule: &models.schedule,
            steps,
            draws: &draws,
        };
        report(&on_progress, "tune", 0, steps, None);
        self.check_cancelled()?;
        let mut after_step = |step: StepReport| {
            losses.push(step.outcome.loss);
            report(
                &on_progress,
                "tune",
                step.steps_done,
                step.total,
                Some(step.outcome.loss),
            );
            Ok(if self.cancelled.get() {
                Flow::Stop
            } else {
                Flow::Continue
            })
        };
        let unet = tuner
            .run_async(models.unet.clone(), &run, &mut after_step)
            .await
            .map_err(tav_error)?;
        self.check_cancelled()?;
        let mut state = self.state.borrow_mut();
        state.unet = Some(unet);
        state.meta = Some(TuneMeta {
            base_fingerprint: models.base_fingerprint().to_string(),
            prompt,
            video: "browser".into(),
            start: 0,
            stride: 1,
            frames: size.count,
            width: size.width,
            height: size.height,
            steps,
            steps_done: steps,
            seed,
            learning_rate: settings.learning_rate,
            losses: losses.clone(),
            loras: Vec::new(),
        });
        state.clip = Some(TunedClip { posterior });
        state.inverted = None;
        Ok(losses)
    }

    async fn invert(&self, options: Options) -> JsResult<()> {
        let models = self.models()?;
        let steps = options.steps("steps", 50)?;
        let on_progress = options.function("onProgress");
        let (unet, latents) = {
            let state = self.state.borrow();
            let clip = state
                .clip
                .as_ref()
                .ok_or_else(|| error("nothing to invert: tune on a clip first"))?;
            let latents = clip_latents(clip.posterior.mean.clone(), models.vae.scaling_factor);
            (state.unet.clone().expect("tuned"), latents)
        };
        let context = self.embed(&models, "")?;
        let mut x = latents;
        let ddim = Ddim::new(&models.schedule, steps).map_err(tav_error)?;
        let denoiser = Denoiser {
            unet: &unet,
            ddim: &ddim,
            options: self.attention(),
        };
        for (i, t) in ddim.inversion_timesteps().into_iter().enumerate() {
            self.check_cancelled()?;
            x = denoiser
                .inversion_step(x, t, context.clone())
                .map_err(tav_error)?;
            self.settle(&x).await?;
            report(&on_progress, "invert", i + 1, steps, None);
        }
        self.state.borrow_mut().inverted = Some(x);
        Ok(())
    }

    async fn edit(&self, prompt: String, options: Options) -> JsResult<JsValue> {
        let models = self.models()?;
        let steps = options.steps("steps", 50)?;
        let guidance = options.number("guidance")?.unwrap_or(12.5);
        if !(0.0..=100.0).contains(&guidance) {
            return Err(error(format!(
                "option `guidance` is {guidance}: it must be 0 to 100 (the reference: 12.5)"
            )));
        }
        let rescale = options.number("guidanceRescale")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&rescale) {
            return Err(error(format!(
                "option `guidanceRescale` is {rescale}: it must be 0 to 1 (0: none, as the \
                 reference; 0.7 for the toy model)"
            )));
        }
        let guidance = Guidance {
            scale: guidance,
            rescale,
        };
        let on_progress = options.function("onProgress");
        let (unet, start) = {
            let state = self.state.borrow();
            let start = state
                .inverted
                .clone()
                .ok_or_else(|| error("nothing to edit: invert the clip first"))?;
            (state.unet.clone().expect("tuned"), start)
        };
        let context = guidance_context(
            self.embed(&models, &prompt)?,
            self.embed(&models, "")?,
            guidance.scale,
        );
        let mut x = start;
        let ddim = Ddim::new(&models.schedule, steps).map_err(tav_error)?;
        let denoiser = Denoiser {
            unet: &unet,
            ddim: &ddim,
            options: self.attention(),
        };
        for (i, &t) in ddim.timesteps().iter().enumerate() {
            self.check_cancelled()?;
            x = denoiser
                .sampling_step(x, t, context.clone(), guidance)
                .map_err(tav_error)?;
            self.settle(&x).await?;
            report(&on_progress, "sample", i + 1, steps, None);
        }
        self.check_cancelled()?;
        let video = decode_video(&models.vae, x, &self.limits(), &mut silent).map_err(tav_error)?;
        let (rgba, size) = to_rgba(video).await.map_err(error)?;
        report(&on_progress, "decode", 1, 1, None);
        let out = Object::new();
        set(&out, "frames", Uint8Array::from(rgba.as_slice()));
        set(&out, "width", size.width as u32);
        set(&out, "height", size.height as u32);
        set(&out, "count", size.count as u32);
        Ok(out.into())
    }

    async fn export_tuned(&self) -> JsResult<Vec<u8>> {
        let models = self.models()?;
        let (unet, meta) = {
            let state = self.state.borrow();
            let meta = state
                .meta
                .clone()
                .ok_or_else(|| error("nothing tuned to export: tune first"))?;
            (state.unet.clone().expect("tuned"), meta)
        };
        let tuner = Tuner::new(&models.unet, TuneSettings::default());
        let tensors = tuner
            .trainable_values_async(&unet)
            .await
            .map_err(tav_error)?;
        TunedWeights {
            meta,
            tensors,
            moments: Default::default(),
        }
        .to_bytes()
        .map_err(tav_error)
    }
}

/// Frames from JavaScript as pixels `[F, 3, H, W]` in [-1, 1].
fn frames_to_pixels(frames: JsValue, size: FrameSize, device: &Device) -> JsResult<Tensor<4>> {
    if let Some(planar) = frames.dyn_ref::<Float32Array>() {
        let expected = size.count * 3 * size.width * size.height;
        size.check(size.count * size.width * size.height * 4)
            .map_err(error)?;
        if planar.length() as usize != expected {
            return Err(error(format!(
                "bad frames: planar pixels of {} frames of {}×{} are {expected} floats, got {}",
                size.count,
                size.width,
                size.height,
                planar.length()
            )));
        }
        let data = TensorData::new(planar.to_vec(), [size.count, 3, size.height, size.width]);
        return Ok(Tensor::from_data(data, device));
    }
    let bytes: Vec<u8> = if let Some(a) = frames.dyn_ref::<Uint8Array>() {
        a.to_vec()
    } else if let Some(a) = frames.dyn_ref::<js_sys::Uint8ClampedArray>() {
        a.to_vec()
    } else {
        return Err(error(
            "bad frames: pass RGBA bytes (Uint8Array or Uint8ClampedArray) or planar pixels (Float32Array)",
        ));
    };
    size.check(bytes.len()).map_err(error)?;
    Ok(to_pixels(&bytes, size, device))
}

/// One step's injected draws, as JavaScript gives them.
struct JsDraws {
    vae_eps: Vec<f32>,
    noise: Vec<f32>,
    timestep: usize,
}

impl JsDraws {
    fn to_device(&self, [f, c, h, w]: [usize; 4], device: &Device) -> tav_core::Result<StepDraws> {
        let n = f * c * h * w;
        if self.vae_eps.len() != n || self.noise.len() != n {
            return Err(TavError::InvalidInput(format!(
                "injected draws must have {n} values each (frames × channels × latent height × width)"
            )));
        }
        Ok(StepDraws {
            vae_eps: Tensor::from_data(TensorData::new(self.vae_eps.clone(), [f, c, h, w]), device),
            noise: Tensor::from_data(TensorData::new(self.noise.clone(), [1, c, f, h, w]), device),
            timestep: self.timestep,
        })
    }
}

fn injected_draws(options: &Options, steps: usize) -> JsResult<Option<Vec<JsDraws>>> {
    let Some(list) = options.value("draws") else {
        return Ok(None);
    };
    let list: js_sys::Array = list
        .dyn_into()
        .map_err(|_| error("option `draws` must be an array"))?;
    if (list.length() as usize) < steps {
        return Err(error(format!(
            "option `draws` has {} steps, tuning takes {steps}",
            list.length()
        )));
    }
    list.iter()
        .take(steps)
        .map(|entry| {
            let step = Options::new(entry);
            let floats = |key: &str| -> JsResult<Vec<f32>> {
                step.value(key)
                    .and_then(|v| v.dyn_into::<Float32Array>().ok())
                    .map(|a| a.to_vec())
                    .ok_or_else(|| error(format!("each draw needs `{key}` as a Float32Array")))
            };
            Ok(JsDraws {
                vae_eps: floats("vaeEps")?,
                noise: floats("noise")?,
                timestep: step.count("timestep", 0)?,
            })
        })
        .collect::<JsResult<Vec<_>>>()
        .map(Some)
}
