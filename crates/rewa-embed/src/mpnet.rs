//! MPNet (Song et al., 2020) as Hugging Face's `MPNetModel` runs it, for inference.
//!
//! It is BERT ([`crate::bert`], whose encoder layer it shares) with three differences, each
//! written here the way `transformers/models/mpnet/modeling_mpnet.py` computes it:
//!
//! 1. No token-type embeddings.
//! 2. Position ids start after the padding index, as RoBERTa's
//!    `create_position_ids_from_input_ids`: `padding_idx + cumsum(ids != padding_idx) * mask`,
//!    so with `pad_token_id = 1` the first token sits at position 2 and padding at 1.
//! 3. A relative position bias added to every layer's attention scores: one table of
//!    `relative_attention_num_buckets` (32) x heads, shared by all layers, indexed by the
//!    T5-style bucket of `key position - query position` (half the buckets per direction,
//!    exact up to 8, logarithmic up to a distance of 128, the last bucket beyond).
//!
//! The bias and the padding mask are the same for every layer, so they are added together
//! once per batch, and each layer adds the sum to its scores.

use crate::bert::{load_stack, padding_bias, Activation, AttentionNames, Layer, LayerSizes};
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

/// The fields of an MPNet `config.json` this module reads.
#[derive(Debug, Clone, Deserialize)]
pub struct MpNetConfig {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the position table (`pad_token_id + 1` of them are never used by text).
    pub max_position_embeddings: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// The padding token id, which is also the padding position.
    pub pad_token_id: u32,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// The feed-forward activation; only "gelu" (exact, erf) is run.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_buckets() -> usize {
    32
}

fn default_act() -> String {
    "gelu".into()
}

/// The relative distance beyond which all offsets share the last bucket (fixed in HF's code).
pub(crate) const MAX_DISTANCE: i64 = 128;

/// MPNet's names for a layer's attention weights under `attention.`.
const MPNET_ATTENTION: AttentionNames = ["attn.q", "attn.k", "attn.v", "attn.o", "LayerNorm"];

/// MPNet's encoder stack with its embeddings: token ids in, last hidden states out.
pub struct MpNetModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    relative_attention_bias: Tensor,
    num_buckets: usize,
    pad_id: u32,
}

impl MpNetModel {
    /// Loads the weights under `vb` (names as in HF's `MPNetModel`, with or without an
    /// `mpnet.` prefix).
    pub fn load(vb: VarBuilder, cfg: &MpNetConfig) -> Result<Self> {
        if cfg.hidden_act != "gelu" {
            candle_core::bail!(
                "MPNet hidden_act {:?}: only \"gelu\" is run",
                cfg.hidden_act
            );
        }
        let sz = LayerSizes {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps,
            act: Activation::Gelu,
        };
        let (emb, enc, layers) =
            load_stack(vb, "mpnet", &sz, &MPNET_ATTENTION, cfg.num_hidden_layers)?;
        let relative_attention_bias = enc.get(
            (cfg.relative_attention_num_buckets, cfg.num_attention_heads),
            "relative_attention_bias.weight",
        )?;
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                emb.pp("position_embeddings"),
            )?,
            embeddings_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers,
            relative_attention_bias,
            num_buckets: cfg.relative_attention_num_buckets,
            pad_id: cfg.pad_token_id,
        })
    }

    /// `ids` and `mask` are [b, s] u32 (mask 1 for a token, 0 for padding); returns the last
    /// hidden states [b, s, hidden].
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let device = ids.device();
        let positions = position_ids(&ids.flatten_all()?.to_vec1::<u32>()?, s, self.pad_id);
        let positions = Tensor::from_vec(positions, (b, s), device)?;
        let x =
            (self.word_embeddings.forward(ids)? + self.position_embeddings.forward(&positions)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;

        // [1, heads, s, s] position bias + [b, 1, 1, s] mask: (1 - mask) * f32::MIN, as HF's
        // get_extended_attention_mask.
        let buckets = bucket_table(s, self.num_buckets);
        let buckets = Tensor::from_vec(buckets, s * s, device)?;
        let heads = self.relative_attention_bias.dim(1)?;
        let bias = self
            .relative_attention_bias
            .index_select(&buckets, 0)?
            .reshape((s, s, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        let bias = bias.broadcast_add(&padding_bias(mask)?)?.contiguous()?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        Ok(x)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.relative_attention_bias.device()
    }
}

/// `create_position_ids_from_input_ids` on rows of `seq` ids: a token's position is `pad_id`
/// plus the count of non-padding tokens up to and including it; padding gets `pad_id`.
fn position_ids(ids: &[u32], seq: usize, pad_id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for row in ids.chunks(seq.max(1)) {
        let mut count = 0;
        for &id in row {
            if id == pad_id {
                out.push(pad_id);
            } else {
                count += 1;
                out.push(pad_id + count);
            }
        }
    }
    out
}

/// The bucket of each (query i, key j) pair, row-major [s, s].
fn bucket_table(s: usize, num_buckets: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(s * s);
    for i in 0..s as i64 {
        for j in 0..s as i64 {
            out.push(relative_position_bucket(j - i, num_buckets, MAX_DISTANCE));
        }
    }
    out
}

/// HF's `MPNetEncoder.relative_position_bucket`, in f32 as torch computes it there:
///
/// ```text
/// n = -relative_position; half = num_buckets / 2
/// ret = (n < 0) * half;  n = |n|;  exact = half / 2
/// ret += n                                                  if n < exact
///        min(half - 1, exact + trunc(ln(n / exact) / ln(max_distance / exact) * (half - exact)))
/// ```
/// (At the bucket edges that are powers of two, 16, 32, 64, 128, the f32 quotient is exact,
/// so truncation gives the same bucket as real arithmetic.)
pub(crate) fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: i64,
) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut n = -relative_position;
    let mut ret = if n < 0 { half } else { 0 };
    n = n.abs();
    let exact = half / 2;
    if n < exact {
        ret += n;
    } else {
        let log_ratio = (n as f32 / exact as f32).ln();
        let scale = (max_distance as f64 / exact as f64).ln() as f32;
        let large = exact + (log_ratio / scale * (half - exact) as f32) as i64;
        ret += large.min(half - 1);
    }
    ret as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hf() {
        // Values from HF's formula with num_buckets=32, max_distance=128: offsets j - i.
        // Keys before the query (j < i, n > 0) use buckets 0..16, keys after it 16..32.
        let cases = [
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-11, 8),
            (-12, 9),
            (-16, 10),
            (-32, 12),
            (-64, 14),
            (-127, 15),
            (-128, 15),
            (-1000, 15),
            (1, 17),
            (7, 23),
            (8, 24),
            (16, 26),
            (64, 30),
            (128, 31),
            (5000, 31),
        ];
        for (rel, want) in cases {
            assert_eq!(relative_position_bucket(rel, 32, 128), want, "offset {rel}");
        }
    }

    #[test]
    fn positions_start_after_padding() {
        // two rows of 4, pad id 1; the second row has two padding slots
        let ids = [0, 5, 6, 2, 0, 7, 1, 1];
        assert_eq!(position_ids(&ids, 4, 1), [2, 3, 4, 5, 2, 3, 1, 1]);
    }
}
