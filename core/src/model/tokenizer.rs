//! The CLIP BPE tokenizer of Stable Diffusion v1.x, over the `tokenizers` crate.
//! Prompts become exactly 77 ids: `<|startoftext|> … <|endoftext|>`, padded with
//! `<|endoftext|>` (49407), truncated keeping the final end token.

use crate::error::{Result, TavError};

pub const BOS: u32 = 49406;
pub const EOS: u32 = 49407;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
    end_id: u32,
    pad_id: u32,
}

impl ClipTokenizer {
    /// From the bytes of `tokenizer.json`.
    pub fn from_tokenizer_json(path: &str, bytes: &[u8], max_len: usize) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TavError::Tokenizer {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        Self::wrap(path, inner, max_len)
    }

    /// From `vocab.json` and `merges.txt`, as SD checkpoints ship them, assembled into the
    /// same pipeline that CLIP's `tokenizer.json` describes (NFC, whitespace collapse,
    /// lowercase, CLIP's split regex, byte-level BPE with `</w>` word ends).
    pub fn from_vocab_merges(
        path: &str,
        vocab: &[u8],
        merges: &str,
        max_len: usize,
    ) -> Result<Self> {
        let err = |reason: String| TavError::Tokenizer {
            path: path.to_string(),
            reason,
        };
        let vocab: serde_json::Value =
            serde_json::from_slice(vocab).map_err(|e| err(format!("vocab.json: {e}")))?;
        // The special tokens' ids are the vocabulary's own (SD's are 49406/49407; a smaller
        // CLIP vocabulary numbers them otherwise).
        let id_of = |token: &str, default: u32| {
            vocab
                .get(token)
                .and_then(|v| v.as_u64())
                .map_or(default, |id| id as u32)
        };
        let (bos, eos) = (id_of("<|startoftext|>", BOS), id_of("<|endoftext|>", EOS));
        let merges: Vec<&str> = merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .collect();
        let spec = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": bos, "content": "<|startoftext|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": true, "special": true},
                {"id": eos, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": true, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex":
                    "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eos],
                "cls": ["<|startoftext|>", bos], "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
                "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
                "byte_fallback": false, "vocab": vocab, "merges": merges}
        });
        let bytes = serde_json::to_vec(&spec).map_err(|e| err(e.to_string()))?;
        Self::from_tokenizer_json(path, &bytes, max_len)
    }

    fn wrap(path: &str, inner: tokenizers::Tokenizer, max_len: usize) -> Result<Self> {
        let end_id = inner
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| TavError::Tokenizer {
                path: path.to_string(),
                reason: "no <|endoftext|> token".into(),
            })?;
        Ok(Self {
            inner,
            max_len,
            end_id,
            pad_id: end_id,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Exactly `max_len` ids for `prompt`.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| TavError::Tokenizer {
                path: "<prompt>".into(),
                reason: format!("cannot tokenize {prompt:?}: {e}"),
            })?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.max_len {
            ids.truncate(self.max_len - 1);
            ids.push(self.end_id);
        }
        ids.resize(self.max_len, self.pad_id);
        Ok(ids)
    }
}
