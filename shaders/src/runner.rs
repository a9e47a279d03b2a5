//! Runs the attention kernels on a wgpu device of their own, with host buffers in and out.
//! This is how the kernels are tested against the plain tensor-op path, and how they can be
//! timed alone; it is not the path the model takes.

use std::collections::HashMap;

use wgpu::util::DeviceExt;

use crate::{
    AttentionMode, Capabilities, Info, LANE_VECS, Launch, MAX_HEAD_DIM, Slot, Storage, Tiling,
    Variant, source,
};

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub videos: usize,
    pub frames: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mode: AttentionMode,
}

impl Shape {
    /// Elements of q (and k, v, o): `[(B·F), L, H·D]`.
    pub fn elements(&self) -> usize {
        self.videos * self.frames * self.tokens * self.heads * self.head_dim
    }

    /// The kernels' uniform block for this shape, one pass, with `max_x` workgroups per
    /// dispatch row.
    pub fn info(&self, max_x: u32) -> Info {
        Info {
            videos: self.videos as u32,
            frames: self.frames as u32,
            tokens: self.tokens as u32,
            heads: self.heads as u32,
            head_dim: self.head_dim as u32,
            mode: self.mode,
            scale: (self.head_dim as f32).powf(-0.5),
            rows_per_dispatch_x: max_x,
            item_start: 0,
            item_end: u32::MAX,
            first_pass: true,
            last_pass: true,
        }
    }
}

/// The attention inputs, `[(B·F), L, H·D]` each.
#[derive(Debug, Clone, Copy)]
pub struct Qkv<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// Forward results: the attention output and each row's log-sum-exp.
pub struct Forward {
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
}

/// Gradients of q, k and v.
pub struct Backward {
    pub d_q: Vec<f32>,
    pub d_k: Vec<f32>,
    pub d_v: Vec<f32>,
}

pub struct KernelRunner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: HashMap<(Variant, bool), wgpu::ComputePipeline>,
    has_f16: bool,
    max_x: u32,
    /// What the adapter offers the plans: its loop budget ([`crate::loop_budget`]) and
    /// subgroups. A test may lower the budget (many passes on any adapter), drop subgroups
    /// (the fallback) or lower `lane_vecs` (small heads split over lanes too).
    pub capabilities: Capabilities,
    pub adapter: String,
    /// Which kernels sparse-causal attention runs (tiled unless set otherwise).
    pub tiling: Tiling,
}

impl KernelRunner {
    /// Opens the default adapter.
    pub fn new() -> Result<Self, String> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = futures_lite::future::block_on(
            instance.request_adapter(&wgpu::RequestAdapterOptions::default()),
        )
        .map_err(|e| format!("no GPU adapter: {e}"))?;
        let has_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        let limits = adapter.limits();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("tav attention kernels"),
            required_features: adapter.features() & wanted,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = futures_lite::future::block_on(adapter.request_device(&descriptor))
            .map_err(|e| format!("cannot open the GPU: {e}"))?;
        let info = adapter.get_info();
        Ok(Self {
            device,
            queue,
            pipelines: HashMap::new(),
            has_f16,
            max_x: limits.max_compute_workgroups_per_dimension,
            capabilities: Capabilities {
                loop_budget: crate::loop_budget(&info.name),
                subgroup_size: subgroups.then_some(info.subgroup_min_size),
                lane_vecs: LANE_VECS,
            },
            adapter: format!("{} ({:?})", info.name, info.backend),
            tiling: Tiling::Tiled,
        })
    }

    /// Whether f16 storage can be used on this adapter.
    pub fn has_f16(&self) -> bool {
        self.has_f16
    }

    fn pipeline(&mut self, launch: &Launch, f16: bool) -> &wgpu::ComputePipeline {
        let device = &self.device;
        let variant = launch.variant();
        let kernel = variant.kernel;
        self.pipelines.entry((variant, f16)).or_insert_with(|| {
            let storage = if f16 { Storage::F16 } else { Storage::F32 };
            let text = source(variant, storage);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.file_name()),
                source: wgpu::ShaderSource::Wgsl(text.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.file_name()),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        })
    }

    fn upload(&self, data: &[f32], f16: bool) -> wgpu::Buffer {
        let bytes: Vec<u8> = if f16 {
            data.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        } else {
            data.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    fn output(&self, elements: usize, f16: bool) -> wgpu::Buffer {
        let size = (elements * if f16 { 2 } else { 4 }).max(4) as u64;
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: size.next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Runs every launch of the forward or backward pass's plan on `buffers` (by slot), with
    /// the plan's scratch.
    fn run_plan(
        &mut self,
        info: &Info,
        backward: bool,
        f16: bool,
        buffers: &[(Slot, &wgpu::Buffer)],
    ) {
        let plan = info.plan(backward, self.tiling, &self.capabilities);
        let state = self.output(plan.state_elements, false);
        let partials = self.output(plan.partial_elements, false);
        let mut all = buffers.to_vec();
        all.extend([(Slot::State, &state), (Slot::Partials, &partials)]);
        for launch in &plan.launches {
            let bound: Vec<&wgpu::Buffer> = launch
                .kernel
                .slots()
                .iter()
                .map(|(slot, _)| {
                    all.iter()
                        .find(|(s, _)| s == slot)
                        .map(|(_, b)| *b)
                        .expect("every slot of the plan is given")
                })
                .collect();
            self.run(launch, f16, &bound);
        }
    }

    fn run(&mut self, launch: &Launch, f16: bool, buffers: &[&wgpu::Buffer]) {
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &launch.info.to_bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let pipeline = self.pipeline(launch, f16).clone();
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: uniform.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            let [x, y] = launch.dispatch();
            pass.dispatch_workgroups(x, y, 1);
        }
        self.queue.submit([encoder.finish()]);
    }

    fn download(&self, buffer: &wgpu::Buffer, elements: usize, f16: bool) -> Vec<f32> {
        let size = buffer.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.expect("map for reading"));
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .expect("GPU finished");
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .expect("mapped")
            .to_vec();
        if f16 {
            bytes
                .chunks_exact(2)
                .take(elements)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        } else {
            bytes
                .chunks_exact(4)
                .take(elements)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
    }

    fn check(&self, shape: &Shape, f16: bool) -> Result<(), String> {
        if shape.head_dim > MAX_HEAD_DIM {
            return Err(format!(
                "head size {} is over the kernels' {MAX_HEAD_DIM}",
                shape.head_dim
            ));
        }
        if f16 && !self.has_f16 {
            return Err("this adapter has no shader-f16".into());
        }
        Ok(())
    }

    /// Attention output and log-sum-exp for q, k, v.
    pub fn forward(&mut self, shape: &Shape, inputs: Qkv, f16: bool) -> Result<Forward, String> {
        let Qkv { q, k, v } = inputs;
        self.check(shape, f16)?;
        let info = shape.info(self.max_x);
        let n = shape.elements();
        let (qb, kb, vb) = (
            self.upload(q, f16),
            self.upload(k, f16),
            self.upload(v, f16),
        );
        let out = self.output(n, f16);
        let lse = self.output(info.rows(), false);
        self.run_plan(
            &info,
            false,
            f16,
            &[
                (Slot::Q, &qb),
                (Slot::K, &kb),
                (Slot::V, &vb),
                (Slot::Out, &out),
                (Slot::Lse, &lse),
            ],
        );
        Ok(Forward {
            out: self.download(&out, n, f16),
            lse: self.download(&lse, info.rows(), false),
        })
    }

    /// Gradients of q, k, v given the forward's results and the output's gradient `d_out`.
    pub fn backward(
        &mut self,
        shape: &Shape,
        inputs: Qkv,
        forward: &Forward,
        d_out: &[f32],
        f16: bool,
    ) -> Result<Backward, String> {
        let Qkv { q, k, v } = inputs;
        self.check(shape, f16)?;
        let info = shape.info(self.max_x);
        let n = shape.elements();
        let (qb, kb, vb) = (
            self.upload(q, f16),
            self.upload(k, f16),
            self.upload(v, f16),
        );
        let ob = self.upload(&forward.out, f16);
        let dob = self.upload(d_out, f16);
        let lse = self.upload(&forward.lse, false);
        let (dq, dk, dv) = (
            self.output(n, f16),
            self.output(n, f16),
            self.output(n, f16),
        );
        let delta = self.output(info.rows(), false);
        self.run_plan(
            &info,
            true,
            f16,
            &[
                (Slot::Q, &qb),
                (Slot::K, &kb),
                (Slot::V, &vb),
                (Slot::Out, &ob),
                (Slot::DOut, &dob),
                (Slot::Lse, &lse),
                (Slot::DQ, &dq),
                (Slot::Delta, &delta),
                (Slot::DK, &dk),
                (Slot::DV, &dv),
            ],
        );
        Ok(Backward {
            d_q: self.download(&dq, n, f16),
            d_k: self.download(&dk, n, f16),
            d_v: self.download(&dv, n, f16),
        })
    }
}
