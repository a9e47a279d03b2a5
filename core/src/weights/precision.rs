//! `--f16`: weights stored in half precision (half the memory), arithmetic in f32. Each
//! layer casts its weights to the activations' dtype where it uses them, so GroupNorm
//! statistics, softmax and the schedule stay f32. Trainable parameters stay f32 (AdamW
//! needs their full precision).

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{DType, Device, Tensor};

use crate::error::{Result, TavError};

/// Whether the device can store f16 tensors.
pub fn supports_f16(device: &Device) -> bool {
    device.supports_dtype(DType::F16)
}

/// `module` with every float parameter stored as f16, except those in `keep`.
pub fn weights_to_f16<M: Module>(module: M, keep: &HashSet<ParamId>, device: &Device) -> Result<M> {
    if !supports_f16(device) {
        return Err(no_f16_error());
    }
    Ok(module.map(&mut ToF16 { keep }))
}

/// What `--f16` says on an adapter without f16 storage.
pub fn no_f16_error() -> TavError {
    TavError::Device("this GPU adapter has no f16 support (shader-f16); run without --f16".into())
}

struct ToF16<'a> {
    keep: &'a HashSet<ParamId>,
}

impl ModuleMapper for ToF16<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Kept, or stored in f16 as it loaded (`LoadOptions::f16`).
        if self.keep.contains(&param.id) || param.val().dtype() == DType::F16 {
            return param;
        }
        let id = param.id;
        Param::initialized(id, param.val().cast(DType::F16))
    }
}

/// `module` with the parameters in `ids` stored as f32 (trainable layers of a model whose
/// weights arrived in f16).
pub fn params_to_f32<M: Module>(module: M, ids: &HashSet<ParamId>) -> M {
    module.map(&mut ToF32 { ids })
}

struct ToF32<'a> {
    ids: &'a HashSet<ParamId>,
}

impl ModuleMapper for ToF32<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.ids.contains(&param.id) {
            return param;
        }
        let id = param.id;
        Param::initialized(id, crate::layers::in_dtype_of(param.val(), DType::F32))
    }
}
