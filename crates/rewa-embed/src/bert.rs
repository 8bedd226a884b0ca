//! BERT (Devlin et al., 2019) as Hugging Face's `BertModel` runs it, for inference, and the
//! encoder layer [`crate::mpnet`] shares with it.
//!
//! The embeddings are word + absolute position + token type (all type 0 here), then
//! LayerNorm. Each encoder layer is self-attention (q/k/v linears, scores scaled by
//! `1/sqrt(head_dim)` plus the padding mask, softmax, output dense, residual, LayerNorm) and a
//! feed-forward block (intermediate dense, activation, output dense, residual, LayerNorm).
//! The weight names are those of `transformers/models/bert/modeling_bert.py`, with or without
//! a `bert.` prefix.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The feed-forward activation, as `config.json`'s `hidden_act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x * Phi(x)` with `erf`.
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU's tanh approximation.
    #[serde(
        rename = "geluapproximate",
        alias = "gelu_new",
        alias = "gelu_pytorch_tanh"
    )]
    GeluApproximate,
    /// `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluApproximate => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// The fields of a BERT `config.json` this module reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
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
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Only "absolute" is run.
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_types() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> Activation {
    Activation::Gelu
}

fn default_position_type() -> String {
    "absolute".into()
}

/// The sizes an encoder layer is built with.
pub(crate) struct LayerSizes {
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) intermediate: usize,
    pub(crate) eps: f64,
    pub(crate) act: Activation,
}

/// Where a layer's attention weights sit under `attention.`: q, k, v, the output dense and the
/// LayerNorm after it.
pub(crate) type AttentionNames = [&'static str; 5];

/// BERT's names.
const BERT_ATTENTION: AttentionNames = [
    "self.query",
    "self.key",
    "self.value",
    "output.dense",
    "output.LayerNorm",
];

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

/// One encoder layer: self-attention and the feed-forward block, each with its residual and
/// LayerNorm.
pub(crate) struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: Activation,
}

impl SelfAttention {
    fn load(vb: VarBuilder, sz: &LayerSizes, names: &AttentionNames) -> Result<Self> {
        let h = sz.hidden;
        if sz.heads == 0 || !h.is_multiple_of(sz.heads) {
            candle_core::bail!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                sz.heads
            );
        }
        let [q, k, v, o, norm] = names;
        Ok(Self {
            q: linear(h, h, vb.pp(q))?,
            k: linear(h, h, vb.pp(k))?,
            v: linear(h, h, vb.pp(v))?,
            o: linear(h, h, vb.pp(o))?,
            norm: layer_norm(h, sz.eps, vb.pp(norm))?,
            heads: sz.heads,
            head_dim: h / sz.heads,
        })
    }

    /// [b, s, h] -> [b, heads, s, head_dim]
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `bias`: added to the scores, broadcast to [b, heads, s, s].
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let q = self.split_heads(&self.q.forward(x)?)?;
        let k = self.split_heads(&self.k.forward(x)?)?;
        let v = self.split_heads(&self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h))?;
        let out = self.o.forward(&ctx)?;
        self.norm.forward(&(out + x)?)
    }
}

impl Layer {
    /// Loads `attention.<names>`, `intermediate.dense`, `output.dense` and `output.LayerNorm`
    /// under `vb`.
    pub(crate) fn load(vb: VarBuilder, sz: &LayerSizes, names: &AttentionNames) -> Result<Self> {
        Ok(Self {
            attention: SelfAttention::load(vb.pp("attention"), sz, names)?,
            intermediate: linear(sz.hidden, sz.intermediate, vb.pp("intermediate.dense"))?,
            output: linear(sz.intermediate, sz.hidden, vb.pp("output.dense"))?,
            norm: layer_norm(sz.hidden, sz.eps, vb.pp("output.LayerNorm"))?,
            act: sz.act,
        })
    }

    /// `bias`: added to the attention scores, broadcast to [b, heads, s, s].
    pub(crate) fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let a = self.attention.forward(x, bias)?;
        let i = self.act.forward(&self.intermediate.forward(&a)?)?;
        let o = self.output.forward(&i)?;
        self.norm.forward(&(o + a)?)
    }
}

/// The padding mask as a score bias, as HF's `get_extended_attention_mask`: `mask` [b, s] u32
/// (1 for a token) to [b, 1, 1, s] f32, `(1 - mask) * f32::MIN`.
pub(crate) fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?.reshape((b, 1, 1, s))?;
    (1.0 - mask)? * f64::from(f32::MIN)
}

/// The weights under `vb` of a model saved with or without its `prefix` (`bert`, `mpnet`):
/// the `embeddings.` and `encoder.` builders and the encoder's `n` layers.
pub(crate) fn load_stack<'a>(
    vb: VarBuilder<'a>,
    prefix: &str,
    sz: &LayerSizes,
    names: &AttentionNames,
    n: usize,
) -> Result<(VarBuilder<'a>, VarBuilder<'a>, Vec<Layer>)> {
    let vb = if vb.contains_tensor(&format!("{prefix}.embeddings.word_embeddings.weight")) {
        vb.pp(prefix)
    } else {
        vb
    };
    let (emb, enc) = (vb.pp("embeddings"), vb.pp("encoder"));
    let layers = (0..n)
        .map(|i| Layer::load(enc.pp(format!("layer.{i}")), sz, names))
        .collect::<Result<Vec<_>>>()?;
    Ok((emb, enc, layers))
}

/// BERT's encoder stack with its embeddings: token ids in, last hidden states out.
pub struct BertModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Loads the weights under `vb` (names as in HF's `BertModel`, with or without a `bert.`
    /// prefix).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        if cfg.position_embedding_type != "absolute" {
            candle_core::bail!(
                "BERT position_embedding_type {:?}: only \"absolute\" is run",
                cfg.position_embedding_type
            );
        }
        let sz = LayerSizes {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        };
        let (emb, _, layers) = load_stack(vb, "bert", &sz, &BERT_ATTENTION, cfg.num_hidden_layers)?;
        let h = cfg.hidden_size;
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, h, emb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                h,
                emb.pp("position_embeddings"),
            )?,
            token_type_embeddings: embedding(
                cfg.type_vocab_size,
                h,
                emb.pp("token_type_embeddings"),
            )?,
            embeddings_norm: layer_norm(h, cfg.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers,
        })
    }

    /// `ids` and `mask` are [b, s] u32 (mask 1 for a token, 0 for padding); every token has
    /// type 0 and position ids are 0..s. Returns the last hidden states [b, s, hidden].
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, s) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, s as u32, device)?;
        let types = ids.zeros_like()?;
        let x = (self.word_embeddings.forward(ids)?
            + self.token_type_embeddings.forward(&types)?)?
        .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        let bias = padding_bias(mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        Ok(x)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.word_embeddings.embeddings().device()
    }
}
