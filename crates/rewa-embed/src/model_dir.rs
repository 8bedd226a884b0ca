//! A sentence-transformers model directory as it ships, read into plain settings.
//!
//! ```text
//! modules.json               the pipeline: Transformer (path ""), Pooling, optional Normalize
//! config.json                the transformer's hyper-parameters; `model_type` picks the module
//! model.safetensors          the transformer's weights
//! tokenizer.json             the tokenizers pipeline (its own truncation and padding are replaced)
//! sentence_bert_config.json  max_seq_length: word pieces per text, [CLS] and [SEP] included
//! tokenizer_config.json      model_max_length: the same, where sentence-transformers >= 6 keeps it
//! <pooling>/config.json      pooling_mode_*: mean / cls / max / mean_sqrt_len
//! ```
//!
//! Two layouts are read. Directories saved by sentence-transformers 2-5 (all-MiniLM-L6-v2 and
//! all-mpnet-base-v2 as they ship) write `max_seq_length` in `sentence_bert_config.json` and
//! the pooling config as `word_embedding_dimension` with `pooling_mode_*` flags; version 6
//! writes `embedding_dimension` and `pooling_mode: "mean"`, and leaves `max_seq_length` out of
//! `sentence_bert_config.json`, keeping it as the tokenizer's `model_max_length`.
//! sentence-transformers (every version) takes the length from `sentence_bert_config.json`
//! when it is there, otherwise `min(model_max_length, max_position_embeddings)`; so does
//! [`ModelDir::read`].
//!
//! These files come from outside, so unknown fields are ignored rather than refused (newer
//! sentence-transformers versions add fields); what this crate cannot run is refused by name.
//! Every size in `config.json` (width, heads, layers, feed-forward width, vocabulary, positions,
//! token types or relative buckets) is checked before a model is built: each in 1..=2^24, the
//! heads dividing the width.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How token vectors become one text vector (sentence-transformers' `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's vector ([CLS] or `<s>`).
    Cls,
    /// Element-wise maximum over the kept tokens.
    Max,
    /// The sum over kept tokens divided by the square root of their count.
    MeanSqrtLen,
}

/// The transformer architecture, from `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// BERT and its small relatives (MiniLM): this crate's `bert` module.
    Bert,
    /// MPNet: this crate's `mpnet` module.
    MpNet,
}

/// What a model directory says, checked; the weights and the tokenizer are read by the embedder.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub dir: PathBuf,
    /// The transformer architecture.
    pub arch: Arch,
    /// The pooling mode.
    pub pooling: Pooling,
    /// Whether a `Normalize` module follows the pooling (L2, as `torch.nn.functional.normalize`).
    pub normalize: bool,
    /// Word pieces per text: `sentence_bert_config.json`'s `max_seq_length`, else
    /// `tokenizer_config.json`'s `model_max_length` capped at the position table.
    pub max_seq_len: usize,
    /// `sentence_bert_config.json`'s `do_lower_case`: texts are lower-cased before the
    /// tokenizer sees them (on top of any lower-casing the tokenizer does itself).
    pub lower_case: bool,
    /// The pooling config's `word_embedding_dimension` (`embedding_dimension` from
    /// sentence-transformers 6 on), checked against the transformer.
    pub dim: usize,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SbertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    /// sentence-transformers 2-5.
    word_embedding_dimension: Option<usize>,
    /// sentence-transformers 6 and later.
    embedding_dimension: Option<usize>,
    pooling_mode: Option<String>,
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    /// A float in some files (transformers writes 1e30 for "no limit").
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
struct ArchConfig {
    model_type: Option<String>,
    max_position_embeddings: Option<usize>,
}

/// The sizes `config.json` gives the transformer, checked before any model is built (a zero
/// or a head count that does not divide the width would panic inside candle).
#[derive(serde::Deserialize)]
pub(crate) struct SizeConfig {
    pub(crate) pad_token_id: Option<u32>,
    pub(crate) hidden_size: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) max_position_embeddings: usize,
    pub(crate) vocab_size: usize,
    #[serde(default = "two")]
    pub(crate) type_vocab_size: usize,
    #[serde(default = "buckets")]
    pub(crate) relative_attention_num_buckets: usize,
}

fn two() -> usize {
    2
}

fn buckets() -> usize {
    32
}

/// Largest size a field of `config.json` may give (2^24): far above any real model's, and small
/// enough that products of two sizes cannot overflow.
const MAX_CONFIG_SIZE: usize = 1 << 24;

impl SizeConfig {
    /// Reads `config.json` and checks its sizes.
    pub(crate) fn read(path: &Path, arch: Arch) -> Result<SizeConfig> {
        let c: SizeConfig = read_json(path)?;
        c.check(arch).map_err(|reason| Error::Model {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(c)
    }

    /// Fails, naming the field, unless every size is one a model can be built with.
    fn check(&self, arch: Arch) -> std::result::Result<(), String> {
        let mut fields = vec![
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        match arch {
            Arch::Bert => fields.push(("type_vocab_size", self.type_vocab_size)),
            Arch::MpNet => fields.push((
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            )),
        }
        for (name, n) in fields {
            if n == 0 || n > MAX_CONFIG_SIZE {
                return Err(format!("{name} {n} is outside 1..={MAX_CONFIG_SIZE}"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        // MPNet's relative buckets: half for each direction, half of those exact offsets.
        if arch == Arch::MpNet && self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets {} (MPNet needs at least 4)",
                self.relative_attention_num_buckets
            ));
        }
        if let Some(p) = self.pad_token_id.filter(|&p| p as usize >= self.vocab_size) {
            return Err(format!(
                "pad_token_id {p} is not below vocab_size {}",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

/// Reads and parses one JSON file of the model directory.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Model {
        path: path.to_path_buf(),
        reason: format!("not the expected JSON: {e}"),
    })
}

impl ModelDir {
    /// Reads `modules.json`, `sentence_bert_config.json`, the pooling config and
    /// `config.json` of the model directory `dir`.
    pub fn read(dir: &Path) -> Result<ModelDir> {
        let modules: Vec<Module> = read_json(&dir.join("modules.json"))?;
        let mut pooling_dir = None;
        let mut normalize = false;
        let mut transformer = false;
        for m in &modules {
            // "sentence_transformers.models.Pooling" and the newer
            // "sentence_transformers.models.pooling.Pooling" alike: the last component names it.
            match m.kind.rsplit('.').next().unwrap_or("") {
                "Transformer" if m.path.is_empty() => transformer = true,
                "Pooling" if pooling_dir.is_none() => pooling_dir = Some(dir.join(&m.path)),
                "Normalize" => normalize = true,
                _ => {
                    return Err(Error::Unsupported(format!(
                        "{}: module {:?} at {:?} (this crate runs Transformer at \"\", then Pooling, then optionally Normalize)",
                        dir.join("modules.json").display(),
                        m.kind,
                        m.path
                    )))
                }
            }
        }
        let (true, Some(pooling_dir)) = (transformer, pooling_dir) else {
            return Err(Error::Model {
                path: dir.join("modules.json"),
                reason: "needs a Transformer module at path \"\" and a Pooling module".into(),
            });
        };
        let pooling_path = pooling_dir.join("config.json");
        let pc: PoolingConfig = read_json(&pooling_path)?;
        let pooling = pooling_mode(&pc).map_err(|reason| Error::Model {
            path: pooling_path.clone(),
            reason,
        })?;

        let sbert_path = dir.join("sentence_bert_config.json");
        let sbert: SbertConfig = read_json(&sbert_path)?;
        let config_path = dir.join("config.json");
        let ac: ArchConfig = read_json(&config_path)?;
        let arch = match ac.model_type.as_deref() {
            Some("bert") => Arch::Bert,
            Some("mpnet") => Arch::MpNet,
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type {other:?} (this crate runs \"bert\" and \"mpnet\")",
                    config_path.display()
                )))
            }
        };
        SizeConfig::read(&config_path, arch)?;
        let tokenizer_limit = || -> Result<Option<usize>> {
            let path = dir.join("tokenizer_config.json");
            if !path.is_file() {
                return Ok(None);
            }
            let tc: TokenizerConfig = read_json(&path)?;
            // `as` saturates: 1e30 becomes usize::MAX, capped below.
            Ok(tc
                .model_max_length
                .filter(|&n| n >= 0.0)
                .map(|n| n as usize))
        };
        let max_seq_len = match (sbert.max_seq_length, ac.max_position_embeddings) {
            (Some(n), _) => n,
            // sentence-transformers falls back to the tokenizer's limit, capped at the model's
            // (which, for MPNet, is here the rows text may use: past them it would fail).
            (None, Some(p)) => {
                let model_limit = positions_for_text(arch, p);
                tokenizer_limit()?.map_or(model_limit, |t| t.min(model_limit))
            }
            (None, None) => {
                return Err(Error::Model {
                    path: sbert_path,
                    reason: "no max_seq_length, and config.json has no max_position_embeddings"
                        .into(),
                })
            }
        };
        if max_seq_len < 2 {
            return Err(Error::Model {
                path: sbert_path,
                reason: format!("max_seq_length {max_seq_len} leaves no room for a word piece"),
            });
        }
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            arch,
            pooling,
            normalize,
            max_seq_len,
            lower_case: sbert.do_lower_case,
            dim: pc
                .word_embedding_dimension
                .or(pc.embedding_dimension)
                .unwrap_or(0),
        })
    }
}

/// SHA-256 of `dir/model.safetensors`, lower-case hex: the identity of a model's weights.
pub fn weights_sha256(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let path = dir.join("model.safetensors");
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::open(&path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Positions a text may use: MPNet (like RoBERTa) reserves the first `pad_token_id + 1`
/// position rows, so 514 rows hold 512 tokens.
pub(crate) fn positions_for_text(arch: Arch, max_position_embeddings: usize) -> usize {
    match arch {
        Arch::Bert => max_position_embeddings,
        Arch::MpNet => max_position_embeddings.saturating_sub(2),
    }
}

fn pooling_mode(pc: &PoolingConfig) -> std::result::Result<Pooling, String> {
    if let Some(mode) = &pc.pooling_mode {
        return match mode.as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            "mean_sqrt_len_tokens" => Ok(Pooling::MeanSqrtLen),
            other => Err(format!("pooling_mode {other:?} is not supported")),
        };
    }
    if pc.pooling_mode_weightedmean_tokens || pc.pooling_mode_lasttoken {
        return Err("weighted-mean and last-token pooling are not supported".into());
    }
    let modes = [
        (pc.pooling_mode_mean_tokens, Pooling::Mean),
        (pc.pooling_mode_cls_token, Pooling::Cls),
        (pc.pooling_mode_max_tokens, Pooling::Max),
        (pc.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
    ];
    let on: Vec<Pooling> = modes.iter().filter(|m| m.0).map(|m| m.1).collect();
    match on[..] {
        [one] => Ok(one),
        [] => Err("no pooling_mode_* is true".into()),
        _ => Err(format!(
            "{} pooling modes at once (their concatenation) are not supported",
            on.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(json: &str) -> PoolingConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn pooling_modes() {
        let mean = pc(r#"{"word_embedding_dimension": 4, "pooling_mode_mean_tokens": true}"#);
        assert_eq!(pooling_mode(&mean), Ok(Pooling::Mean));
        assert_eq!(
            pooling_mode(&pc(r#"{"pooling_mode_cls_token": true}"#)),
            Ok(Pooling::Cls)
        );
        assert_eq!(
            pooling_mode(&pc(r#"{"pooling_mode": "max"}"#)),
            Ok(Pooling::Max)
        );
        assert!(pooling_mode(&pc("{}")).is_err());
        assert!(pooling_mode(&pc(
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#
        ))
        .is_err());
        assert!(pooling_mode(&pc(r#"{"pooling_mode_lasttoken": true}"#)).is_err());
    }

    #[test]
    fn reads_the_layouts_of_sentence_transformers_before_and_from_6() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
            std::fs::write(dir.join(name), text).unwrap();
        };
        write(
            "modules.json",
            r#"[{"path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]"#,
        );
        write(
            "config.json",
            r#"{"model_type": "mpnet", "max_position_embeddings": 514, "hidden_size": 8,
                "num_attention_heads": 2, "num_hidden_layers": 1, "intermediate_size": 16,
                "vocab_size": 30}"#,
        );
        // sentence-transformers 6: the length lives in the tokenizer config.
        write(
            "1_Pooling/config.json",
            r#"{"embedding_dimension": 8, "pooling_mode": "mean", "include_prompt": true}"#,
        );
        write(
            "sentence_bert_config.json",
            r#"{"transformer_task": "feature-extraction"}"#,
        );
        write("tokenizer_config.json", r#"{"model_max_length": 16}"#);
        let m = ModelDir::read(dir).unwrap();
        assert_eq!((m.dim, m.pooling, m.max_seq_len), (8, Pooling::Mean, 16));
        // transformers' "no limit": the position table's (514 rows, 512 for text).
        write(
            "tokenizer_config.json",
            r#"{"model_max_length": 1000000000000000019884624838656}"#,
        );
        assert_eq!(ModelDir::read(dir).unwrap().max_seq_len, 512);
        std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
        assert_eq!(ModelDir::read(dir).unwrap().max_seq_len, 512);
        // Before 6: sentence_bert_config.json's max_seq_length wins over the tokenizer's.
        write("tokenizer_config.json", r#"{"model_max_length": 512}"#);
        write(
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true}"#,
        );
        write(
            "sentence_bert_config.json",
            r#"{"max_seq_length": 384, "do_lower_case": false}"#,
        );
        let m = ModelDir::read(dir).unwrap();
        assert_eq!((m.dim, m.pooling, m.max_seq_len), (8, Pooling::Cls, 384));
    }
}
