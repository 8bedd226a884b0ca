//! `Embedder`: texts in, sentence-transformers vectors out.
//!
//! The steps are those of `SentenceTransformer.encode`: tokenize with truncation to
//! `max_seq_len` word pieces (special tokens included), sort the texts by length so that a
//! batch carries little padding, run the transformer on each batch padded to its longest text,
//! pool the token vectors the attention mask keeps, L2-normalise when the model lists a
//! `Normalize` module, and put the rows back in input order. Padding is masked out of attention
//! and pooling, so a text's vector does not depend on the batch it ran in (up to float
//! rounding).

use crate::attention::{Attention, AttentionShape, KeyProjections, Plan};
use crate::bert::{BertConfig, BertModel};
use crate::error::{Error, Result};
use crate::model_dir::{positions_for_text, read_json, Arch, ModelDir, Pooling, SizeConfig};
use crate::mpnet::{MpNetConfig, MpNetModel};
use crate::native::{Native, NativeConfig};
use crate::precision::Precision;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rewa::Vectors;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Texts per forward pass unless [`Embedder::set_batch_size`] says otherwise
/// (sentence-transformers' default).
pub const DEFAULT_BATCH_SIZE: usize = 32;

enum Transformer {
    Bert(BertModel),
    MpNet(MpNetModel),
    Native(Native),
}

/// Which implementation runs the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The plain-Rust forward pass (`native.rs`): no padding, fused element-wise work, one
    /// batch per core. The default.
    #[default]
    Native,
    /// This crate's candle BERT and MPNet (`bert.rs`, `mpnet.rs`): the reference the native
    /// pass is tested against.
    Candle,
}

/// A loaded sentence-embedding model, run by candle on the CPU in f32.
///
/// ```no_run
/// let embedder = rewa_embed::Embedder::load("models/all-MiniLM-L6-v2")?;
/// let v = embedder.embed(&["A man is eating food.", "A cat sleeps."])?;
/// assert_eq!((v.len(), v.dim()), (2, embedder.dim()));
/// # Ok::<(), rewa_embed::Error>(())
/// ```
pub struct Embedder {
    model: Transformer,
    tokenizer: Tokenizer,
    info: ModelDir,
    dim: usize,
    max_positions: usize,
    max_seq_len: usize,
    batch_size: usize,
    pad_id: u32,
    attention: Attention,
    plan: Option<Plan>,
    precision: Precision,
}

/// Vectors and the word pieces they were made from.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One row per text, in input order.
    pub vectors: Vectors,
    /// Word pieces the model saw, after truncation, special tokens included, padding excluded.
    pub tokens: usize,
}

impl Embedder {
    /// Loads a sentence-transformers model directory (see [`crate::model_dir`] for the files).
    pub fn load(dir: impl AsRef<Path>) -> Result<Embedder> {
        Embedder::load_with(dir, Backend::default())
    }

    /// [`Embedder::load`] with the transformer run by `backend` (a model the native pass
    /// cannot run, such as one with another activation, falls back to candle).
    pub fn load_with(dir: impl AsRef<Path>, backend: Backend) -> Result<Embedder> {
        Embedder::load_opts(dir, backend, Precision::F32)
    }

    /// [`Embedder::load`] with the linear layers in `precision`. int8 runs in the native
    /// forward pass only: asked of the candle backend, or of a model the native pass cannot
    /// run, it is an error (never a silent f32).
    pub fn load_precision(dir: impl AsRef<Path>, precision: Precision) -> Result<Embedder> {
        Embedder::load_opts(dir, Backend::default(), precision)
    }

    /// [`Embedder::load_with`] and [`Embedder::load_precision`] in one.
    pub fn load_opts(
        dir: impl AsRef<Path>,
        backend: Backend,
        precision: Precision,
    ) -> Result<Embedder> {
        let dir = dir.as_ref();
        if precision == Precision::Int8 && backend == Backend::Candle {
            return Err(Error::Unsupported(
                "int8 runs in the native forward pass, not on candle".into(),
            ));
        }
        let info = ModelDir::read(dir)?;
        let config_path = dir.join("config.json");
        let pc = SizeConfig::read(&config_path, info.arch)?;
        if pc.hidden_size != info.dim {
            return Err(Error::Model {
                path: config_path,
                reason: format!(
                    "hidden_size {} but the pooling config says embedding dimension {}",
                    pc.hidden_size, info.dim
                ),
            });
        }
        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(Error::Model {
                path: weights_path,
                reason: "missing (this crate reads safetensors weights only)".into(),
            });
        }
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load(&weights_path, &device)?;
        let native = match backend {
            Backend::Native => {
                let cfg: NativeConfig = read_json(&config_path)?;
                let native = Native::load(
                    info.arch,
                    precision,
                    &cfg,
                    &tensors,
                    pc.vocab_size,
                    pc.max_position_embeddings,
                    pc.type_vocab_size,
                );
                match native {
                    Ok(n) => Some(n),
                    Err(e) if precision == Precision::Int8 => {
                        return Err(Error::Unsupported(format!(
                            "int8 needs the native forward pass, which cannot run this model: {e}"
                        )))
                    }
                    Err(_) => None,
                }
            }
            Backend::Candle => None,
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = match info.arch {
            _ if native.is_some() => Transformer::Native(native.expect("invariant: is_some")),
            Arch::Bert => {
                let cfg: BertConfig = read_json(&config_path)?;
                Transformer::Bert(BertModel::load(vb, &cfg)?)
            }
            Arch::MpNet => {
                let cfg: MpNetConfig = read_json(&config_path)?;
                Transformer::MpNet(MpNetModel::load(vb, &cfg)?)
            }
        };
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        // tokenizer.json carries its own fixed padding and truncation (128 for both models
        // here); sentence-transformers replaces them, and so do we.
        tokenizer.with_padding(None);
        let pad_id = pc
            .pad_token_id
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .unwrap_or(0);
        let max_positions = positions_for_text(info.arch, pc.max_position_embeddings);
        let mut embedder = Embedder {
            model,
            tokenizer,
            dim: info.dim,
            max_positions,
            max_seq_len: 0,
            batch_size: DEFAULT_BATCH_SIZE,
            pad_id,
            info,
            attention: Attention::Full,
            plan: None,
            precision,
        };
        embedder.set_max_seq_len(embedder.info.max_seq_len)?;
        Ok(embedder)
    }

    /// The length of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Word pieces per text, special tokens included; longer texts are cut.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The arithmetic of the linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The implementation running the transformer.
    pub fn backend(&self) -> Backend {
        match self.model {
            Transformer::Native(_) => Backend::Native,
            _ => Backend::Candle,
        }
    }

    /// What the model directory says.
    pub fn model_dir(&self) -> &ModelDir {
        &self.info
    }

    /// Changes the truncation length (the model directory's `max_seq_length` by default).
    /// It must leave room for one word piece and fit the model's position table.
    pub fn set_max_seq_len(&mut self, n: usize) -> Result<()> {
        if n < 3 || n > self.max_positions {
            return Err(Error::InvalidInput(format!(
                "max_seq_len {n}: this model takes 3..={} word pieces",
                self.max_positions
            )));
        }
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: n,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        self.max_seq_len = n;
        Ok(())
    }

    /// Changes the number of texts per forward pass (at least 1).
    pub fn set_batch_size(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::InvalidInput("batch size 0".into()));
        }
        self.batch_size = n;
        Ok(())
    }

    /// How self-attention runs ([`Attention::Full`] unless [`Embedder::set_attention`] said
    /// otherwise).
    pub fn attention(&self) -> &Attention {
        &self.attention
    }

    /// The model's attention shape (layers, heads, head dimension), when the native pass runs
    /// it.
    pub fn attention_shape(&self) -> Option<AttentionShape> {
        match &self.model {
            Transformer::Native(m) => Some(m.shape()),
            _ => None,
        }
    }

    /// Runs self-attention as `a` says. REWA attention needs the native pass (the default
    /// backend); its `keys=FILE` must come from this model's weights (checked by their
    /// SHA-256) and shape.
    pub fn set_attention(&mut self, a: Attention) -> Result<()> {
        let plan = match &a {
            Attention::Full => None,
            Attention::Rewa(cfg) => {
                let shape = self.attention_shape().ok_or_else(|| {
                    Error::Unsupported(
                        "REWA attention runs in the native forward pass; this model runs on candle"
                            .into(),
                    )
                })?;
                let keys = match &cfg.keys {
                    Some(path) => {
                        let k = KeyProjections::load(path)?;
                        let sha = crate::model_dir::weights_sha256(&self.info.dir)?;
                        if k.weights_sha256 != sha {
                            return Err(Error::Model {
                                path: path.clone(),
                                reason: format!(
                                    "fitted on the keys of other weights (SHA-256 {}), not {}'s ({sha}): fit them for this model with `rewa attention fit`",
                                    k.weights_sha256,
                                    self.info.dir.display()
                                ),
                            });
                        }
                        Some(k)
                    }
                    None => None,
                };
                Some(Plan::new(cfg.clone(), shape, keys.as_ref())?)
            }
        };
        self.attention = a;
        self.plan = plan;
        Ok(())
    }

    /// Fits [`KeyProjections`] on `texts`: per layer and head, the principal directions of
    /// the keys full attention computes for them (each text's keys centred on their mean).
    /// `progress(n)` after each batch of `n` texts. Never fit on the texts you evaluate.
    pub fn fit_key_projections(
        &self,
        texts: &[&str],
        progress: impl Fn(usize) + Sync,
    ) -> Result<KeyProjections> {
        use rayon::prelude::*;
        let Transformer::Native(m) = &self.model else {
            return Err(Error::Unsupported(
                "fitting key projections needs the native forward pass; this model runs on candle"
                    .into(),
            ));
        };
        let shape = m.shape();
        let (heads, d) = (shape.heads, shape.head_dim);
        let h = heads * d;
        let per_layer = heads * d * d;
        let ids = self.tokenize(texts)?;
        let batches: Vec<&[Vec<u32>]> = ids.chunks(self.batch_size).collect();
        let (cov, keys) = batches
            .par_iter()
            .map(|batch| -> Result<(Vec<f64>, usize)> {
                let rows: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
                let mut cov = vec![0f64; shape.layers * per_layer];
                let mut kc = Vec::new();
                let mut part = vec![0f32; d * d];
                let mut observe = |layer: usize, qkv: &[f32]| {
                    let mut start = 0;
                    for r in &rows {
                        let len = r.len();
                        for hd in 0..heads {
                            kc.clear();
                            let mut mean = vec![0f32; d];
                            for i in 0..len {
                                let k = &qkv[(start + i) * 3 * h + h + hd * d..][..d];
                                kc.extend_from_slice(k);
                                mean.iter_mut()
                                    .zip(k)
                                    .for_each(|(m, x)| *m += x / len as f32);
                            }
                            for row in kc.chunks_exact_mut(d) {
                                row.iter_mut().zip(&mean).for_each(|(x, m)| *x -= m);
                            }
                            rewa::linalg::gemm_atb(&kc, &kc, len, d, d, &mut part);
                            let c = &mut cov[layer * per_layer + hd * d * d..][..d * d];
                            c.iter_mut()
                                .zip(&part)
                                .for_each(|(a, b)| *a += f64::from(*b));
                        }
                        start += len;
                    }
                };
                m.forward(&rows, None, Some(&mut observe))?;
                progress(batch.len());
                Ok((cov, rows.iter().map(|r| r.len()).sum()))
            })
            .try_reduce(
                || (vec![0f64; shape.layers * per_layer], 0),
                |mut a, b| {
                    a.0.iter_mut().zip(b.0).for_each(|(x, y)| *x += y);
                    Ok((a.0, a.1 + b.1))
                },
            )?;
        let sha = crate::model_dir::weights_sha256(&self.info.dir)?;
        KeyProjections::from_covariances(shape, &cov, texts.len(), keys, sha)
    }

    /// The vectors of `texts`, one row each, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vectors> {
        Ok(self.embed_counted(texts)?.vectors)
    }

    /// The vectors of `texts` and the number of word pieces the model saw.
    pub fn embed_counted(&self, texts: &[&str]) -> Result<Embedded> {
        self.embed_with_progress(texts, |_| {})
    }

    /// [`Embedder::embed_counted`], calling `progress(n)` after each batch with the number of
    /// texts it held (for progress bars over long inputs: all of `texts` is tokenized first,
    /// then sorted by length, so batches pad little).
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        mut progress: impl FnMut(usize),
    ) -> Result<Embedded> {
        let ids = self.tokenize(texts)?;
        let tokens = ids.iter().map(Vec::len).sum();
        // Longest first, as sentence-transformers does; ties keep input order.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![0f32; texts.len() * self.dim];
        // Batches run side by side, one per core: candle's element-wise kernels (layer norm,
        // GELU, softmax) and the small attention products use one thread each, so a single
        // batch at a time left a core idle for a third of the time.
        // The native pass also caps the word pieces per pass: its activations then stay in
        // cache-sized pieces whatever the batch size (it pads nothing, so small passes cost
        // no padding).
        let cap = match self.model {
            Transformer::Native(_) => pass_tokens(),
            _ => usize::MAX,
        };
        let mut batches: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let (mut end, mut held) = (start, 0);
            while end < order.len()
                && end - start < self.batch_size
                && (end == start || held + ids[order[end]].len() <= cap)
            {
                held += ids[order[end]].len();
                end += 1;
            }
            batches.push(&order[start..end]);
            start = end;
        }
        let workers = rayon::current_num_threads().max(1);
        for group in batches.chunks(workers * 2) {
            use rayon::prelude::*;
            let pooled: Vec<Result<Vec<f32>>> = group
                .par_iter()
                .map(|batch| {
                    let rows: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
                    self.forward(&rows)
                })
                .collect();
            for (batch, pooled) in group.iter().zip(pooled) {
                for (&i, row) in batch.iter().zip(pooled?.chunks_exact(self.dim)) {
                    out[i * self.dim..(i + 1) * self.dim].copy_from_slice(row);
                }
                progress(batch.len());
            }
        }
        let vectors = Vectors::new(self.dim, out)
            .map_err(|e| Error::InvalidInput(format!("assembling the vectors: {e}")))?;
        Ok(Embedded { vectors, tokens })
    }

    /// The word-piece ids of each text after truncation, special tokens included.
    ///
    /// Only as much of a long text as truncation can reach is tokenized (a 5 MB line once took
    /// 600 MB to tokenize whole, to keep 256 word pieces): a text longer than
    /// [`Embedder::tokenized_bytes`] is cut at a word boundary, and the cut grows eightfold
    /// until its word pieces fill `max_seq_len` or it holds the whole text. Word pieces never
    /// span a word boundary, so the kept pieces are those of the whole text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let mut budget = self.tokenized_bytes();
        let mut ids = self.encode(texts.iter().map(|t| cut(t, budget)))?;
        loop {
            // texts cut short whose pieces did not fill max_seq_len
            let short: Vec<usize> = (0..texts.len())
                .filter(|&i| {
                    ids[i].len() < self.max_seq_len && cut(texts[i], budget).len() < texts[i].len()
                })
                .collect();
            if short.is_empty() {
                return Ok(ids);
            }
            budget = budget.saturating_mul(8);
            let redo = self.encode(short.iter().map(|&i| cut(texts[i], budget)))?;
            for (i, r) in short.into_iter().zip(redo) {
                ids[i] = r;
            }
        }
    }

    /// Bytes of a text tokenized at first: 64 per word piece of `max_seq_len`, at least 16 KiB.
    /// Real text averages 4 to 8 bytes per word piece, so this cut is rarely grown.
    pub fn tokenized_bytes(&self) -> usize {
        (self.max_seq_len * 64).max(16 << 10)
    }

    /// Tokenizes `texts` as they are (lower-cased first if the model says so), truncated.
    fn encode<'a>(&self, texts: impl Iterator<Item = &'a str>) -> Result<Vec<Vec<u32>>> {
        let enc = if self.info.lower_case {
            let lower: Vec<String> = texts.map(str::to_lowercase).collect();
            let refs: Vec<&str> = lower.iter().map(String::as_str).collect();
            self.tokenizer.encode_batch_fast(refs, true)
        } else {
            self.tokenizer
                .encode_batch_fast(texts.collect::<Vec<_>>(), true)
        }
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Pads `rows` to the longest, runs the transformer, pools and normalises: `rows.len()`
    /// vectors, flat.
    fn forward(&self, rows: &[&[u32]]) -> Result<Vec<f32>> {
        if let Transformer::Native(m) = &self.model {
            let hidden = m.forward(rows, self.plan.as_ref(), None)?;
            let mut out = vec![0f32; rows.len() * self.dim];
            let mut start = 0;
            for (r, o) in rows.iter().zip(out.chunks_exact_mut(self.dim)) {
                let tokens = &hidden[start * self.dim..(start + r.len()) * self.dim];
                pool(self.info.pooling, tokens, &vec![1; r.len()], o);
                if self.info.normalize {
                    normalize(o);
                }
                start += r.len();
            }
            return Ok(out);
        }
        let b = rows.len();
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; b * seq];
        let mut mask = vec![0u32; b * seq];
        for (i, r) in rows.iter().enumerate() {
            ids[i * seq..i * seq + r.len()].copy_from_slice(r);
            mask[i * seq..i * seq + r.len()].fill(1);
        }
        let device = Device::Cpu;
        let ids_t = Tensor::from_vec(ids, (b, seq), &device)?;
        let mask_t = Tensor::from_vec(mask.clone(), (b, seq), &device)?;
        let hidden = match &self.model {
            Transformer::Bert(m) => m.forward(&ids_t, &mask_t)?,
            Transformer::MpNet(m) => m.forward(&ids_t, &mask_t)?,
            Transformer::Native(_) => unreachable!("handled above"),
        };
        let hidden = hidden
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = vec![0f32; b * self.dim];
        for (i, o) in out.chunks_exact_mut(self.dim).enumerate() {
            let tokens = &hidden[i * seq * self.dim..(i + 1) * seq * self.dim];
            pool(self.info.pooling, tokens, &mask[i * seq..(i + 1) * seq], o);
            if self.info.normalize {
                normalize(o);
            }
        }
        Ok(out)
    }
}

/// The first `max` bytes of `text` or fewer, ending at a word boundary: before the last
/// whitespace, else before the last character that is not alphanumeric (punctuation is a word
/// piece of its own), else at a character boundary (a word of thousands of letters is one
/// unknown piece either way). The whole text when it is no longer than `max`.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    let at = |f: fn(char) -> bool| head.rfind(f).filter(|&i| i > 0);
    let i = at(char::is_whitespace)
        .or_else(|| at(|c| !c.is_alphanumeric()))
        .unwrap_or(end);
    &text[..i]
}

/// Word pieces per native forward pass: `REWA_EMBED_PASS_TOKENS` (for measurements), else
/// 2048.
fn pass_tokens() -> usize {
    std::env::var("REWA_EMBED_PASS_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2048)
}

/// Pools one text's token vectors (`mask.len()` rows of `out.len()`) into `out`, counting only
/// the tokens the mask keeps (sentence-transformers' `Pooling.forward`).
pub(crate) fn pool(mode: Pooling, tokens: &[f32], mask: &[u32], out: &mut [f32]) {
    let dim = out.len();
    let kept = || {
        tokens
            .chunks_exact(dim)
            .zip(mask)
            .filter(|(_, &m)| m != 0)
            .map(|(t, _)| t)
    };
    match mode {
        Pooling::Cls => out.copy_from_slice(&tokens[..dim]),
        Pooling::Max => {
            // sentence-transformers sets masked tokens to -1e9 before the max.
            out.fill(-1e9);
            for t in kept() {
                for (o, &x) in out.iter_mut().zip(t) {
                    *o = o.max(x);
                }
            }
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            out.fill(0.0);
            let mut n = 0usize;
            for t in kept() {
                n += 1;
                for (o, &x) in out.iter_mut().zip(t) {
                    *o += x;
                }
            }
            // torch.clamp(sum_mask, min=1e-9)
            let n = (n as f32).max(1e-9);
            let div = if mode == Pooling::Mean { n } else { n.sqrt() };
            for o in out.iter_mut() {
                *o /= div;
            }
        }
    }
}

/// `torch.nn.functional.normalize(x, p=2, dim=1)`: x / max(|x|, 1e-12).
pub(crate) fn normalize(x: &mut [f32]) {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    for v in x.iter_mut() {
        *v /= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedder_can_be_shared_between_threads() {
        // The server and the Python package call one loaded model from many threads.
        fn shareable<T: Send + Sync>() {}
        shareable::<Embedder>();
    }

    #[test]
    fn pooling_respects_the_mask() {
        // three tokens of dim 2, the last one padding
        let tokens = [1.0, 2.0, 3.0, -4.0, 100.0, 100.0];
        let mask = [1, 1, 0];
        let mut out = [0f32; 2];
        pool(Pooling::Mean, &tokens, &mask, &mut out);
        assert_eq!(out, [2.0, -1.0]);
        pool(Pooling::Max, &tokens, &mask, &mut out);
        assert_eq!(out, [3.0, 2.0]);
        pool(Pooling::Cls, &tokens, &mask, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        pool(Pooling::MeanSqrtLen, &tokens, &mask, &mut out);
        let s = 2f32.sqrt();
        assert_eq!(out, [4.0 / s, -2.0 / s]);
    }

    #[test]
    fn cuts_end_at_word_boundaries() {
        assert_eq!(cut("short", 100), "short");
        assert_eq!(cut("one two three", 9), "one two");
        assert_eq!(cut("one two three", 8), "one two");
        assert_eq!(cut("one two three", 7), "one");
        assert_eq!(cut("a,b,cdef", 6), "a,b");
        assert_eq!(cut("abcdef", 4), "abcd");
        // never inside a character: "é" is two bytes
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut(" abc", 2), " a");
    }

    #[test]
    fn normalize_leaves_zero_alone() {
        let mut z = [0f32; 3];
        normalize(&mut z);
        assert_eq!(z, [0.0; 3]);
        let mut x = [3.0, 4.0];
        normalize(&mut x);
        assert_eq!(x, [0.6, 0.8]);
    }
}
