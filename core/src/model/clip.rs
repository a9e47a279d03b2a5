//! The CLIP text encoder (transformers' `CLIPTextModel`): token and position embeddings,
//! pre-norm transformer layers with a causal mask and quick-GELU, and a final layer norm.
//! Its last hidden state conditions the UNet.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::attention::multi_head;
use crate::config::ClipConfig;
use crate::error::{Result, TavError};
use crate::layers::{LayerNorm, Linear};
use crate::weights::{HostTable, Layout, ParamBuilder};

#[derive(Module, Debug)]
pub struct ClipLayer {
    pub layer_norm1: LayerNorm,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct ClipTextEncoder {
    /// `[vocab, D]`, in host memory: rows are gathered on the CPU.
    #[module(skip)]
    pub token_embedding: HostTable,
    pub position_embedding: Param<Tensor<2>>,
    pub layers: Vec<ClipLayer>,
    pub final_layer_norm: LayerNorm,
    pub heads: usize,
    pub quick_gelu: bool,
}

impl ClipLayer {
    fn load(p: &ParamBuilder, cfg: &ClipConfig) -> Result<Self> {
        let (d, ff, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let a = p.sub("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::load(&p.sub("layer_norm1"), d, eps)?,
            q_proj: Linear::load(&a.sub("q_proj"), d, d, true)?,
            k_proj: Linear::load(&a.sub("k_proj"), d, d, true)?,
            v_proj: Linear::load(&a.sub("v_proj"), d, d, true)?,
            out_proj: Linear::load(&a.sub("out_proj"), d, d, true)?,
            layer_norm2: LayerNorm::load(&p.sub("layer_norm2"), d, eps)?,
            fc1: Linear::load(&p.sub("mlp.fc1"), d, ff, true)?,
            fc2: Linear::load(&p.sub("mlp.fc2"), ff, d, true)?,
        })
    }

    fn forward(&self, x: Tensor<3>, heads: usize, mask: Tensor<2, Bool>, quick: bool) -> Tensor<3> {
        let h = self.layer_norm1.forward(x.clone());
        let q = self.q_proj.forward(h.clone());
        let k = self.k_proj.forward(h.clone());
        let v = self.v_proj.forward(h);
        let x = self
            .out_proj
            .forward(multi_head(q, k, v, heads, Some(mask)))
            + x;
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if quick {
            h.clone() * sigmoid(h.mul_scalar(1.702))
        } else {
            gelu(h)
        };
        self.fc2.forward(h) + x
    }
}

impl ClipTextEncoder {
    pub fn load(p: &ParamBuilder, cfg: &ClipConfig) -> Result<Self> {
        cfg.validate("text_encoder/config.json")?;
        let t = p.sub("text_model");
        let d = cfg.hidden_size;
        Ok(Self {
            token_embedding: t.host("embeddings.token_embedding.weight", &[cfg.vocab_size, d])?,
            position_embedding: t.param(
                "embeddings.position_embedding.weight",
                [cfg.max_position_embeddings, d],
                Layout::Same,
            )?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| ClipLayer::load(&t.sub(format!("encoder.layers.{i}")), cfg))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::load(&t.sub("final_layer_norm"), d, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            quick_gelu: cfg.hidden_act == crate::config::TextActivation::QuickGelu,
        })
    }

    /// Last hidden state `[P, L, D]` for `P` prompts of `L` token ids each.
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>> {
        let prompts = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        let [positions, d] = self.position_embedding.dims();
        if prompts == 0 || len == 0 || len > positions || ids.iter().any(|r| r.len() != len) {
            return Err(TavError::InvalidInput(format!(
                "text encoder input must be one or more rows of equal length ≤ {positions}"
            )));
        }
        let vocab = self.token_embedding.shape[0];
        let mut rows = Vec::with_capacity(prompts * len * d);
        for &id in ids.iter().flatten() {
            let id = id as usize;
            if id >= vocab {
                return Err(TavError::InvalidInput(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
            self.token_embedding.push_row(id, &mut rows);
        }
        let tokens = Tensor::<3>::from_data(TensorData::new(rows, [prompts, len, d]), device);
        let position = crate::layers::in_dtype_of(self.position_embedding.val(), tokens.dtype())
            .narrow(0, 0, len)
            .unsqueeze::<3>();
        let mut x = tokens + position;
        let mask = causal_mask(len, device);
        for layer in &self.layers {
            x = layer.forward(x, self.heads, mask.clone(), self.quick_gelu);
        }
        Ok(self.final_layer_norm.forward(x))
    }
}

/// True above the diagonal: token i sees tokens 0..=i only.
fn causal_mask(len: usize, device: &Device) -> Tensor<2, Bool> {
    let data: Vec<bool> = (0..len)
        .flat_map(|i| (0..len).map(move |j| j > i))
        .collect();
    Tensor::from_data(TensorData::new(data, [len, len]), device)
}
