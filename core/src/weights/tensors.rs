//! Reading safetensors and turning named tensors into burn parameters.
//!
//! Key names are the reference's module paths everywhere
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`), so checkpoints,
//! goldens and tuned deltas line up without mapping tables.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use burn::module::{Param, ParamId};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{Result, Shape, TavError};

/// A tensor in host memory, always f32 (f16/bf16/f64 are converted on read).
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// PyTorch's `[out, in]` linear weight as burn's `[in, out]`.
    pub fn transposed_2d(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        HostTensor::new(vec![cols, rows], data)
    }

    pub fn to_device<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// Rounded to f16 on the host and stored in f16 on the device: no f32 copy ever reaches
    /// the GPU.
    pub fn to_device_f16<const D: usize>(&self, device: &Device) -> Tensor<D> {
        let bytes: Vec<u8> = self
            .data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let data = TensorData::from_bytes_vec(bytes, self.shape.clone(), DType::F16);
        Tensor::from_data(data, (device, DType::F16))
    }
}

/// Anything that hands out named tensors: a safetensors file, a stack of files, generated
/// initial values.
pub trait TensorSource {
    /// Where the tensors come from, for error messages.
    fn origin(&self) -> String;
    /// The tensor named `key`, or `None` if this source does not have it.
    fn fetch(&self, key: &str) -> Result<Option<HostTensor>>;
    /// Every key this source holds.
    fn keys(&self) -> Vec<String>;
    /// Whether the source holds `key`.
    fn contains(&self, key: &str) -> bool {
        self.keys().iter().any(|k| k == key)
    }
    /// The shape of `key` as [`TensorSource::fetch`] would give it; sources that know it
    /// from a header answer without reading the data.
    fn shape_of(&self, key: &str) -> Result<Option<Vec<usize>>> {
        Ok(self.fetch(key)?.map(|t| t.shape))
    }
    /// The tensor `key` already in GPU memory (streamed sources); `None` if this source
    /// does not hold it there.
    fn fetch_on_device(&self, _key: &str) -> Result<Option<DeviceTensor>> {
        Ok(None)
    }
    /// The host tensor `key` in f16, moved out of the source (streamed sources, which then
    /// hold no copy); `None` if this source does not keep it so.
    fn take_host_f16(&self, _key: &str) -> Option<HostTensorF16> {
        None
    }
}

/// A tensor's values in host memory as little-endian f16 bytes (as they were streamed),
/// moved out of a streamed source.
#[derive(Debug)]
pub struct HostTensorF16 {
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// A table kept in host memory (CLIP's token table), f32 or, as streamed, f16 (half the
/// bytes). Cloning shares it: a cloned model does not copy its table.
#[derive(Debug, Clone)]
pub struct HostTable {
    pub shape: Vec<usize>,
    values: Arc<HostValues>,
}

#[derive(Debug)]
enum HostValues {
    F32(Vec<f32>),
    /// Little-endian f16 bytes.
    F16(Vec<u8>),
}

impl HostTable {
    pub fn f32(tensor: HostTensor) -> Self {
        Self {
            shape: tensor.shape,
            values: Arc::new(HostValues::F32(tensor.data)),
        }
    }

    pub fn f16(tensor: HostTensorF16) -> Self {
        Self {
            shape: tensor.shape,
            values: Arc::new(HostValues::F16(tensor.bytes)),
        }
    }

    /// The whole table as f32.
    pub fn to_f32(&self) -> HostTensor {
        let rows = self.shape.first().copied().unwrap_or(0);
        let mut data = Vec::with_capacity(self.shape.iter().product());
        for r in 0..rows {
            self.push_row(r, &mut data);
        }
        HostTensor::new(self.shape.clone(), data)
    }

    /// Appends row `r` (of a 2-D table) to `out`, as f32.
    pub fn push_row(&self, r: usize, out: &mut Vec<f32>) {
        let d = self.shape[1];
        match &*self.values {
            HostValues::F32(v) => out.extend_from_slice(&v[r * d..(r + 1) * d]),
            HostValues::F16(v) => out.extend(
                v[2 * r * d..2 * (r + 1) * d]
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
        }
    }
}

/// A tensor already on the GPU, flat, with its reference (PyTorch) shape.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    pub shape: Vec<usize>,
    pub flat: Tensor<1>,
}

/// A parsed safetensors file held in memory.
pub struct SafetensorsFile {
    path: String,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Parses the header and checks that every tensor's bytes are inside the buffer.
    pub fn from_bytes(path: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| TavError::CorruptWeights {
                path: path.clone(),
                reason: describe_safetensors_error(&e, bytes.len()),
            })?;
        Ok(Self {
            path,
            bytes,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Reads a file from disk (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TavError::MissingFile {
                    path: shown.clone(),
                    what: "safetensors weights".into(),
                }
            } else {
                TavError::Io {
                    path: shown.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
        Self::from_bytes(shown, bytes)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// String metadata stored in the header (`__metadata__`).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    /// Every tensor's key and shape, from the header alone.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.metadata
            .tensors()
            .into_iter()
            .map(|(k, info)| (k, info.shape.clone()))
            .collect()
    }

    /// Shape of `key` without reading its data.
    pub fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.metadata.info(key).map(|i| i.shape.clone())
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            format!(
                "the header describes more bytes than the file holds ({len} bytes): the file is truncated"
            )
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            format!(
                "the file ({len} bytes) is too short to hold its header: truncated or not safetensors"
            )
        }
        other => other.to_string(),
    }
}

impl TensorSource for SafetensorsFile {
    fn origin(&self) -> String {
        self.path.clone()
    }

    fn fetch(&self, key: &str) -> Result<Option<HostTensor>> {
        Ok(self
            .decoded(key, decode_floats)?
            .map(|(shape, data)| HostTensor::new(shape, data)))
    }

    fn keys(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    fn contains(&self, key: &str) -> bool {
        self.metadata.info(key).is_some()
    }

    fn shape_of(&self, key: &str) -> Result<Option<Vec<usize>>> {
        Ok(self.metadata.info(key).map(|i| i.shape.clone()))
    }
}

/// Little-endian numbers of any numeric dtype (floats, signed and unsigned integers, bool)
/// as f64: for small tensors that tools store as integers, such as a LoRA's alpha (diffusers'
/// kohya converter writes it as an int64 scalar). `None` for other dtypes.
pub fn decode_numbers(raw: &[u8], dtype: Dtype) -> Option<Vec<f64>> {
    fn each<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        raw.chunks_exact(N)
            .map(|b| f(b.try_into().expect("chunk of N")))
            .collect()
    }
    Some(match dtype {
        Dtype::BOOL | Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
        Dtype::I8 => raw.iter().map(|&b| b as i8 as f64).collect(),
        Dtype::I16 => each(raw, |b| i16::from_le_bytes(b) as f64),
        Dtype::U16 => each(raw, |b| u16::from_le_bytes(b) as f64),
        Dtype::I32 => each(raw, |b| i32::from_le_bytes(b) as f64),
        Dtype::U32 => each(raw, |b| u32::from_le_bytes(b) as f64),
        Dtype::I64 => each(raw, |b| i64::from_le_bytes(b) as f64),
        Dtype::U64 => each(raw, |b| u64::from_le_bytes(b) as f64),
        Dtype::F64 => each(raw, f64::from_le_bytes),
        other => decode_floats(raw, other)?
            .into_iter()
            .map(f64::from)
            .collect(),
    })
}

impl SafetensorsFile {
    /// A tensor of any numeric dtype as f64 (see [`decode_numbers`]), with its shape.
    pub fn fetch_numbers(&self, key: &str) -> Result<Option<(Vec<usize>, Vec<f64>)>> {
        self.decoded(key, decode_numbers)
    }

    /// Tensor `key`'s shape and values as `decode` reads its dtype; a dtype it cannot read is
    /// an error naming the tensor.
    fn decoded<T>(
        &self,
        key: &str,
        decode: fn(&[u8], Dtype) -> Option<Vec<T>>,
    ) -> Result<Option<(Vec<usize>, Vec<T>)>> {
        let Some(info) = self.metadata.info(key) else {
            return Ok(None);
        };
        let (start, end) = info.data_offsets;
        let raw = &self.bytes[self.data_start + start..self.data_start + end];
        let data = decode(raw, info.dtype).ok_or_else(|| TavError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: key.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        Ok(Some((info.shape.clone(), data)))
    }
}

/// Little-endian float bytes to f32; `None` for non-float dtypes.
pub fn decode_floats(raw: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        // fp8 checkpoints (ComfyUI's `fp8_e4m3fn` / `fp8_e5m2` saves).
        Dtype::F8_E5M2 => raw
            .iter()
            .map(|&b| half::f16::from_bits((b as u16) << 8).to_f32())
            .collect(),
        Dtype::F8_E4M3 => raw.iter().map(|&b| f8_e4m3fn(b)).collect(),
        _ => return None,
    })
}

/// One float8 e4m3fn (PyTorch's `float8_e4m3fn`): bias 7, no infinities, `0x7f`/`0xff` NaN.
fn f8_e4m3fn(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((b >> 3) & 0x0f) as i32;
    let mantissa = (b & 0x07) as f32;
    if exponent == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    sign * if exponent == 0 {
        mantissa / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    }
}

/// Every tensor asked for, made up from its key and shape: PyTorch-like uniform init
/// (±1/√fan_in) for weights, ones for 1-D scales, small normals for embeddings, zeros for
/// biases. Seeded per key, so values do not depend on creation order. For models that need
/// SD's shapes but not its weights: the demo model, benchmarks.
pub struct RandomInit {
    pub seed: u64,
}

impl RandomInit {
    pub fn value(&self, key: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let mut rng = crate::draws::SeededRng::for_stream(self.seed, key);
        if key.contains("embedding") {
            return rng.normal_vec(n).into_iter().map(|v| v * 0.02).collect();
        }
        if key.ends_with(".bias") {
            return vec![0.0; n];
        }
        if shape.len() == 1 {
            return vec![1.0; n];
        }
        let fan_in: usize = shape[1..].iter().product();
        let bound = (1.0 / fan_in as f32).sqrt();
        rng.uniform_vec(n, -bound, bound)
    }
}

impl RandomInit {
    /// A builder that makes every parameter it is asked for with this init.
    pub fn builder<'a>(&self, device: &Device) -> ParamBuilder<'a> {
        self.builder_scaling(device, "", 1.0)
    }

    /// Like [`Self::builder`], with every tensor whose key ends in `suffix` scaled by `scale`.
    pub fn builder_scaling<'a>(
        &self,
        device: &Device,
        suffix: &'static str,
        scale: f32,
    ) -> ParamBuilder<'a> {
        let init = RandomInit { seed: self.seed };
        ParamBuilder::from_source(&NO_TENSORS, device).with_fallback(Rc::new(
            move |key: &str, shape: &[usize]| {
                let mut values = init.value(key, shape);
                if key.ends_with(suffix) && scale != 1.0 {
                    values.iter_mut().for_each(|v| *v *= scale);
                }
                Some(HostTensor::new(shape.to_vec(), values))
            },
        ))
    }
}

/// A source with no tensors (everything comes from a fallback).
struct NoTensors;

static NO_TENSORS: NoTensors = NoTensors;

impl TensorSource for NoTensors {
    fn origin(&self) -> String {
        "random weights".into()
    }

    fn fetch(&self, _key: &str) -> Result<Option<HostTensor>> {
        Ok(None)
    }

    fn keys(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Several sources tried in order: the first that has a key wins.
pub struct LayeredSource<'a> {
    pub layers: Vec<&'a dyn TensorSource>,
}

impl TensorSource for LayeredSource<'_> {
    fn origin(&self) -> String {
        let names: Vec<String> = self.layers.iter().map(|l| l.origin()).collect();
        names.join(" + ")
    }

    fn fetch(&self, key: &str) -> Result<Option<HostTensor>> {
        for layer in &self.layers {
            if let Some(t) = layer.fetch(key)? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    fn fetch_on_device(&self, key: &str) -> Result<Option<DeviceTensor>> {
        for layer in &self.layers {
            if let Some(t) = layer.fetch_on_device(key)? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    fn keys(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.layers.iter().flat_map(|l| l.keys()).collect();
        set.into_iter().collect()
    }

    fn shape_of(&self, key: &str) -> Result<Option<Vec<usize>>> {
        for layer in &self.layers {
            if let Some(shape) = layer.shape_of(key)? {
                return Ok(Some(shape));
            }
        }
        Ok(None)
    }
}

/// Weights with NaN or infinity are refused as they load, naming the file and tensor
/// (otherwise they surface much later as a NaN loss).
fn refuse_non_finite(values: &[f32], source: &dyn TensorSource, key: &str) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(TavError::NonFiniteWeights {
        path: source.origin(),
        tensor: key.to_string(),
    })
}

/// How a stored tensor maps onto a burn parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Stored as is.
    Same,
    /// A PyTorch `[out, in]` linear weight, kept by burn as `[in, out]`.
    LinearWeight,
}

/// One parameter the model asked for: its reference key and its reference (PyTorch) shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    pub key: String,
    pub shape: Vec<usize>,
    pub id: ParamId,
    /// How burn holds it (a linear weight is transposed).
    pub layout: Layout,
}

/// Builds the parameters of a model, either from a tensor source (checked against the
/// shapes the config implies) or lazily, as shapes only (to count parameters of SD-sized
/// models without allocating anything).
/// Makes the value of a tensor that the source lacks (e.g. new temporal layers), from its
/// key and reference shape; `None` if it cannot.
pub type Fallback = Rc<dyn Fn(&str, &[usize]) -> Option<HostTensor>>;

#[derive(Clone)]
pub struct ParamBuilder<'a> {
    source: Option<&'a dyn TensorSource>,
    fallback: Option<Fallback>,
    device: Device,
    prefix: String,
    record: Rc<RefCell<Vec<ParamEntry>>>,
    /// Which keys are stored in f16 on the device (`--f16`'s frozen weights), rounded on the
    /// host as they are loaded.
    stored_f16: Option<fn(&str) -> bool>,
    /// Check every tensor's presence and shape against the source's headers, reading no
    /// data and allocating nothing (`tav pack-web`'s check of what it packs).
    verify_only: bool,
}

impl<'a> ParamBuilder<'a> {
    pub fn from_source(source: &'a dyn TensorSource, device: &Device) -> Self {
        Self {
            source: Some(source),
            fallback: None,
            device: device.clone(),
            prefix: String::new(),
            record: Rc::default(),
            stored_f16: None,
            verify_only: false,
        }
    }

    /// Shapes only: every parameter is left uninitialised (and never will be unless used).
    pub fn shapes_only(device: &Device) -> Self {
        Self {
            source: None,
            fallback: None,
            device: device.clone(),
            prefix: String::new(),
            record: Rc::default(),
            stored_f16: None,
            verify_only: false,
        }
    }

    /// Checks `source` against the model instead of loading it: every parameter present (or
    /// given by the fallback) with its shape; nothing is read or allocated.
    pub fn verifying(source: &'a dyn TensorSource, device: &Device) -> Self {
        Self {
            verify_only: true,
            ..Self::from_source(source, device)
        }
    }

    /// In [`ParamBuilder::verifying`] mode: `key`'s presence and shape checked.
    fn verify(&self, source: &dyn TensorSource, key: &str, shape: &[usize]) -> Result<()> {
        let found = match source.shape_of(key)? {
            Some(found) => found,
            None => match self.fallback.as_ref().and_then(|f| f(key, shape)) {
                Some(made) => made.shape,
                None => {
                    return Err(TavError::MissingTensor {
                        path: source.origin(),
                        tensor: key.to_string(),
                    });
                }
            },
        };
        if found != shape {
            return Err(TavError::ShapeMismatch {
                path: source.origin(),
                tensor: key.to_string(),
                expected: Shape(shape.to_vec()),
                found: Shape(found),
            });
        }
        Ok(())
    }

    /// Parameters whose key passes `stored_f16` are rounded to f16 on the host and stored in
    /// f16 on the device (frozen weights under `--f16`): loading never holds their f32 copy
    /// on the GPU, so its peak is the f16 model's, not the f32 one's.
    pub fn with_f16_storage(mut self, stored_f16: fn(&str) -> bool) -> Self {
        self.stored_f16 = Some(stored_f16);
        self
    }

    /// Values for keys the source lacks.
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// A builder for the sub-module `name` (keys get `name.` in front).
    pub fn sub(&self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        Self {
            prefix: if self.prefix.is_empty() {
                name.to_string()
            } else {
                format!("{}.{}", self.prefix, name)
            },
            ..self.clone()
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether the source holds the tensor `name` (false when building shapes only).
    pub fn has(&self, name: &str) -> bool {
        self.source.is_some_and(|s| s.contains(&self.key(name)))
    }

    /// Every parameter requested so far (shared by all sub-builders).
    pub fn entries(&self) -> Vec<ParamEntry> {
        self.record.borrow().clone()
    }

    /// Keys in the source that no parameter asked for.
    pub fn unused_keys(&self) -> Vec<String> {
        let Some(source) = self.source else {
            return Vec::new();
        };
        let used: BTreeSet<String> = self.record.borrow().iter().map(|e| e.key.clone()).collect();
        source
            .keys()
            .into_iter()
            .filter(|k| !used.contains(k))
            .collect()
    }

    /// A tensor kept in host memory (e.g. CLIP's token table, gathered on the CPU because at
    /// SD size it exceeds WebGPU's 128 MiB binding limit). Empty data when building shapes only.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTable> {
        let key = self.key(name);
        self.record.borrow_mut().push(ParamEntry {
            key: key.clone(),
            shape: shape.to_vec(),
            id: ParamId::new(),
            layout: Layout::Same,
        });
        let Some(source) = self.source.filter(|_| !self.verify_only) else {
            if let Some(source) = self.source {
                self.verify(source, &key, shape)?;
            }
            return Ok(HostTable::f32(HostTensor {
                shape: shape.to_vec(),
                data: Vec::new(),
            }));
        };
        let table = match source.take_host_f16(&key) {
            Some(half) => HostTable::f16(half),
            None => {
                let fetched = match source.fetch(&key)? {
                    Some(t) => Some(t),
                    None => self.fallback.as_ref().and_then(|f| f(&key, shape)),
                };
                let fetched = fetched.ok_or_else(|| TavError::MissingTensor {
                    path: source.origin(),
                    tensor: key.clone(),
                })?;
                refuse_non_finite(&fetched.data, source, &key)?;
                HostTable::f32(fetched)
            }
        };
        if table.shape != shape {
            return Err(TavError::ShapeMismatch {
                path: source.origin(),
                tensor: key,
                expected: Shape(shape.to_vec()),
                found: Shape(table.shape),
            });
        }
        Ok(table)
    }

    /// The parameter `name` with the reference shape `shape`.
    pub fn param<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        layout: Layout,
    ) -> Result<Param<Tensor<D>>> {
        let key = self.key(name);
        let id = ParamId::new();
        self.record.borrow_mut().push(ParamEntry {
            key: key.clone(),
            shape: shape.to_vec(),
            id,
            layout,
        });
        let stored_shape = match layout {
            Layout::Same => shape,
            Layout::LinearWeight => {
                let mut s = shape;
                s.reverse();
                s
            }
        };
        if let Some(source) = self.source.filter(|_| self.verify_only) {
            self.verify(source, &key, &shape)?;
        }
        let Some(source) = self.source.filter(|_| !self.verify_only) else {
            return Ok(Param::uninitialized(
                id,
                move |device, _| Tensor::zeros(stored_shape, device),
                self.device.clone(),
                false,
                stored_shape.into(),
            ));
        };
        if let Some(on_device) = source.fetch_on_device(&key)? {
            return self.device_param(id, key, on_device, shape, layout);
        }
        let fetched = match source.fetch(&key)? {
            Some(t) => Some(t),
            None => self.fallback.as_ref().and_then(|f| f(&key, &shape)),
        };
        let host = fetched.ok_or_else(|| TavError::MissingTensor {
            path: source.origin(),
            tensor: key.clone(),
        })?;
        refuse_non_finite(&host.data, source, &key)?;
        if host.shape != shape {
            return Err(TavError::ShapeMismatch {
                path: source.origin(),
                tensor: key,
                expected: Shape(shape.to_vec()),
                found: Shape(host.shape),
            });
        }
        let host = match layout {
            Layout::Same => host,
            Layout::LinearWeight => host.transposed_2d(),
        };
        let tensor = if self.stored_f16.is_some_and(|f16| f16(&key)) {
            host.to_device_f16::<D>(&self.device)
        } else {
            host.to_device::<D>(&self.device)
        };
        Ok(Param::initialized(id, tensor))
    }

    /// A parameter from a tensor already on the GPU: checked, reshaped, and transposed to
    /// burn's layout where needed (a view; nothing is copied to the host).
    fn device_param<const D: usize>(
        &self,
        id: ParamId,
        key: String,
        on_device: DeviceTensor,
        shape: [usize; D],
        layout: Layout,
    ) -> Result<Param<Tensor<D>>> {
        if on_device.shape != shape {
            return Err(TavError::ShapeMismatch {
                path: self.source.map(|s| s.origin()).unwrap_or_default(),
                tensor: key,
                expected: Shape(shape.to_vec()),
                found: Shape(on_device.shape),
            });
        }
        let tensor = on_device.flat.reshape(shape);
        let tensor = match layout {
            Layout::Same => tensor,
            Layout::LinearWeight => tensor.transpose(),
        };
        Ok(Param::initialized(id, tensor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fp8 checkpoints (ComfyUI's saves) and integer alphas (diffusers' kohya converter)
    /// decode to the values PyTorch gives them.
    #[test]
    fn fp8_and_integer_dtypes_decode() {
        let e4m3 =
            decode_floats(&[0x38, 0x40, 0xb8, 0x7e, 0x01, 0x00, 0x7f], Dtype::F8_E4M3).unwrap();
        assert_eq!(&e4m3[..6], &[1.0, 2.0, -1.0, 448.0, 2f32.powi(-9), 0.0]);
        assert!(e4m3[6].is_nan());
        let e5m2 = decode_floats(&[0x3c, 0xc0, 0x7c], Dtype::F8_E5M2).unwrap();
        assert_eq!(e5m2, vec![1.0, -2.0, f32::INFINITY]);
        let i64s: Vec<u8> = [4i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode_numbers(&i64s, Dtype::I64).unwrap(), vec![4.0, -3.0]);
        assert_eq!(
            decode_numbers(&[1, 0], Dtype::BOOL).unwrap(),
            vec![1.0, 0.0]
        );
        let f16 = half::f16::from_f32(2.5).to_le_bytes();
        assert_eq!(decode_numbers(&f16, Dtype::F16).unwrap(), vec![2.5]);
        assert!(decode_floats(&[0, 0, 0, 0], Dtype::I32).is_none());
    }
}
