//! `learned=DIR`: a trained two-layer MLP, run without any training framework.
//!
//! ```text
//! y = l2norm(LN2(W2 · GELU(LN1(W1 x + b1)) + b2))
//! ```
//!
//! `LN` is layer normalisation with a learned scale and shift, `GELU` the tanh approximation
//! (the one `candle`'s `Tensor::gelu` computes). Dropout and input noise exist only in
//! training. Training lives in the `rewa-train` crate; this file owns the model directory
//! format both sides use:
//!
//! | file | content |
//! |---|---|
//! | `config.json` | [`ModelConfig`]: format tag and version, dims, `ln_eps`, and the training record |
//! | `model.safetensors` | f32 tensors `l1.weight` (h x d), `l1.bias`, `ln1.weight`, `ln1.bias` (h), `l2.weight` (m x h), `l2.bias`, `ln2.weight`, `ln2.bias` (m) |
//! | `quantizer.safetensors` | optional: the quantizer trained with the model (`rewa train --qat pq32`), as the quantizer's own tensors; `config.json` names it (`"quantizer": "pq32"`), and `learned=DIR+pq32` takes it instead of fitting one |

use super::{AnyQuantizer, QuantizerSpec, TensorSource, Transform};
use crate::error::{invalid, Error, Result};
use crate::vectors::{Vectors, VectorsRef};
use rayon::prelude::*;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// The `format` tag of a model's `config.json`.
pub const MODEL_FORMAT: &str = "rewa-learned-mlp";
/// The model directory version this build reads and writes.
pub const MODEL_VERSION: u32 = 1;
/// Config file name inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// Weights file name inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The jointly trained quantizer's file inside a model directory (optional).
pub const QUANTIZER_FILE: &str = "quantizer.safetensors";

/// The tensor names, in the order [`LearnedTransform::tensors`] gives them.
pub const TENSOR_NAMES: [&str; 8] = [
    "l1.weight",
    "l1.bias",
    "ln1.weight",
    "ln1.bias",
    "l2.weight",
    "l2.bias",
    "ln2.weight",
    "ln2.bias",
];

/// `config.json` of a model directory.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// [`MODEL_VERSION`] when written by this build.
    pub version: u32,
    /// Input dimension `d`.
    pub dim_in: usize,
    /// Hidden width `h`.
    pub hidden: usize,
    /// Output dimension `m`.
    pub dim_out: usize,
    /// Layer-norm epsilon.
    pub ln_eps: f32,
    /// How the model was trained (hyper-parameters, seed, data fingerprint, best epoch); kept
    /// as written, not read by inference.
    #[serde(default)]
    pub training: serde_json::Value,
    /// The quantizer trained with the model (a quantizer token such as `pq32` or `rabitq2`),
    /// kept in [`QUANTIZER_FILE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantizer: Option<String>,
}

/// Settings for [`LearnedTransform`]: where the trained model lives.
#[derive(Clone, Debug, Default)]
pub struct LearnedConfig {
    /// The model directory.
    pub path: PathBuf,
}

/// A trained MLP encoder.
#[derive(Clone, Debug)]
pub struct LearnedTransform {
    dim_in: usize,
    hidden: usize,
    dim_out: usize,
    eps: f32,
    /// The eight tensors, in [`TENSOR_NAMES`] order.
    t: [Vec<f32>; 8],
}

impl LearnedTransform {
    /// A transform from its tensors, in [`TENSOR_NAMES`] order; lengths are checked.
    pub fn from_tensors(
        dim_in: usize,
        hidden: usize,
        dim_out: usize,
        eps: f32,
        t: [Vec<f32>; 8],
    ) -> Result<Self> {
        if dim_in == 0 || hidden == 0 || dim_out == 0 {
            return invalid!(
                "learned model dims must be >= 1, got {dim_in} -> {hidden} -> {dim_out}"
            );
        }
        if !(eps > 0.0 && eps.is_finite()) {
            return invalid!("layer-norm epsilon must be positive, got {eps}");
        }
        let s = Self::shapes(dim_in, hidden, dim_out);
        for ((name, shape), v) in TENSOR_NAMES.iter().zip(&s).zip(&t) {
            let want: usize = shape.iter().product();
            if v.len() != want {
                return invalid!("tensor {name}: {} values, expected {shape:?}", v.len());
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return invalid!("tensor {name} holds a non-finite value {x}");
            }
        }
        Ok(LearnedTransform {
            dim_in,
            hidden,
            dim_out,
            eps,
            t,
        })
    }

    /// From the eight tensors of `src` for `d` inputs (dims from `l1.weight`, `h x d`, and
    /// `l2.weight`, `m x h`); the layer-norm epsilon is `eps`, or else the tensor `ln_eps`
    /// (as an index stores it).
    pub fn from_source(src: &TensorSource<'_>, d: usize, eps: Option<f32>) -> Result<Self> {
        let (s1, s2) = (src.shape("l1.weight")?, src.shape("l2.weight")?);
        if s1.len() != 2 || s2.len() != 2 || s1[1] != d || s2[1] != s1[0] {
            return Err(src.corrupt(format!(
                "weight shapes {s1:?} and {s2:?} do not chain from dimension {d}"
            )));
        }
        let (h, m) = (s1[0], s2[0]);
        let shapes = Self::shapes(d, h, m);
        let mut t: [Vec<f32>; 8] = Default::default();
        for (i, (name, shape)) in TENSOR_NAMES.iter().zip(&shapes).enumerate() {
            if src.shape(name)? != *shape {
                return Err(src.corrupt(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    src.shape(name)?
                )));
            }
            t[i] = src.f32(name, shape.iter().product())?;
        }
        let eps = match eps {
            Some(e) => e,
            None => src.f32("ln_eps", 1)?[0],
        };
        Self::from_tensors(d, h, m, eps, t).map_err(|e| src.corrupt(e))
    }

    /// Shapes of the eight tensors for dims `d -> h -> m`, in [`TENSOR_NAMES`] order.
    pub(crate) fn shapes(d: usize, h: usize, m: usize) -> [Vec<usize>; 8] {
        [
            vec![h, d],
            vec![h],
            vec![h],
            vec![h],
            vec![m, h],
            vec![m],
            vec![m],
            vec![m],
        ]
    }

    /// `(name, shape, values)` of every tensor, in [`TENSOR_NAMES`] order.
    pub fn tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let s = Self::shapes(self.dim_in, self.hidden, self.dim_out);
        TENSOR_NAMES
            .iter()
            .zip(s)
            .zip(&self.t)
            .map(|((n, s), v)| (*n, s, v.as_slice()))
            .collect()
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Layer-norm epsilon.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Loads `dir/config.json` and `dir/model.safetensors`, checking format, version and shapes.
    pub fn load(dir: &Path) -> Result<(Self, ModelConfig)> {
        let cfg = read_config(dir)?;
        let wpath = dir.join(WEIGHTS_FILE);
        crate::io::check_readable(&wpath, u64::MAX)?;
        let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::corrupt(&wpath, format!("safetensors: {e}")))?;
        // The same reader as an index's parameters: the eight tensors, shapes from the file.
        let me = Self::from_source(
            &TensorSource::new(&st, &wpath),
            cfg.dim_in,
            Some(cfg.ln_eps),
        )?;
        if (me.hidden, me.dim_out) != (cfg.hidden, cfg.dim_out) {
            return Err(Error::corrupt(
                &wpath,
                format!(
                    "weights of {} -> {} -> {}, config.json says {} -> {} -> {}",
                    me.dim_in, me.hidden, me.dim_out, cfg.dim_in, cfg.hidden, cfg.dim_out
                ),
            ));
        }
        Ok((me, cfg))
    }

    /// Writes `dir/model.safetensors` and `dir/config.json` (each atomically; the config is
    /// written last, so a directory with a config always has its weights). `training` is
    /// stored in the config as given.
    pub fn save(&self, dir: &Path, training: serde_json::Value) -> Result<ModelConfig> {
        self.save_with(dir, training, None)
    }

    /// [`LearnedTransform::save`], with the quantizer trained for the model's outputs (written
    /// first; the config naming it last).
    pub fn save_with(
        &self,
        dir: &Path,
        training: serde_json::Value,
        quantizer: Option<(QuantizerSpec, &AnyQuantizer)>,
    ) -> Result<ModelConfig> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if let Some((_, q)) = quantizer {
            let tensors = q.tensors();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .map(|t| {
                    let view =
                        safetensors::tensor::TensorView::new(t.dtype(), t.shape.clone(), t.bytes())
                            .expect("invariant: shape matches length");
                    (t.name.clone(), view)
                })
                .collect();
            let bytes = safetensors::serialize(views, None)
                .map_err(|e| Error::InvalidInput(format!("safetensors: {e}")))?;
            crate::io::write_atomic(&dir.join(QUANTIZER_FILE), &[&bytes])?;
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors()
            .into_iter()
            .map(|(n, s, v)| {
                let view =
                    safetensors::tensor::TensorView::new(Dtype::F32, s, crate::io::as_bytes(v))
                        .expect("invariant: shape matches length");
                (n.to_string(), view)
            })
            .collect();
        let wpath = dir.join(WEIGHTS_FILE);
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| Error::InvalidInput(format!("safetensors: {e}")))?;
        crate::io::write_atomic(&wpath, &[&bytes])?;
        let cfg = ModelConfig {
            format: MODEL_FORMAT.into(),
            version: MODEL_VERSION,
            dim_in: self.dim_in,
            hidden: self.hidden,
            dim_out: self.dim_out,
            ln_eps: self.eps,
            training,
            quantizer: quantizer.map(|(s, _)| s.to_string()),
        };
        let text = serde_json::to_string_pretty(&cfg).expect("invariant: config serialises");
        crate::io::write_atomic(&dir.join(CONFIG_FILE), &[text.as_bytes()])?;
        Ok(cfg)
    }

    /// Runs the MLP on `n` rows of `x` (row-major, `n x dim_in`) into `out` (`n x dim_out`).
    fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let (d, h, m) = (self.dim_in, self.hidden, self.dim_out);
        let [w1, b1, g1, be1, w2, b2, g2, be2] = &self.t;
        let mut hid = vec![0f32; n * h];
        crate::linalg::gemm_abt(&x[..n * d], w1, n, d, h, &mut hid);
        for row in hid.chunks_exact_mut(h) {
            add_bias(row, b1);
            layer_norm(row, g1, be1, self.eps);
            row.iter_mut().for_each(|v| *v = gelu(*v));
        }
        crate::linalg::gemm_abt(&hid, w2, n, h, m, &mut out[..n * m]);
        for row in out[..n * m].chunks_exact_mut(m) {
            add_bias(row, b2);
            layer_norm(row, g2, be2, self.eps);
            crate::vectors::normalize(row);
        }
    }
}

fn add_bias(row: &mut [f32], b: &[f32]) {
    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
}

/// Layer normalisation of one row in place: mean 0, variance 1 (biased), then scale and shift.
pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    row.iter_mut().for_each(|v| *v -= mean);
    let var = row.iter().map(|v| v * v).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = *v * inv * g + b;
    }
}

/// GELU, tanh approximation (as `candle`'s `Tensor::gelu`):
/// `0.5 v (1 + tanh(u)) = v * sigmoid(2u)` with `u = sqrt(2/pi) (v + 0.044715 v^3)`; the
/// sigmoid form needs one `exp` instead of `tanh`, which is several times slower.
#[inline]
pub fn gelu(v: f32) -> f32 {
    v / (1.0 + (-2.0 * gelu_u(v)).exp())
}

/// The argument of GELU's tanh.
#[inline]
pub fn gelu_u(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)
}

/// The `config.json` of the model directory `dir`, checked (format and version).
fn read_config(dir: &Path) -> Result<ModelConfig> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model directory (train one with `rewa train`)",
            ),
        ));
    }
    let cpath = dir.join(CONFIG_FILE);
    crate::io::check_readable(&cpath, crate::io::MAX_TEXT_BYTES)?;
    let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let cfg: ModelConfig = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt(&cpath, format!("not a model config: {e}")))?;
    if cfg.format != MODEL_FORMAT {
        return Err(Error::corrupt(
            &cpath,
            format!("format {:?}, expected {MODEL_FORMAT:?}", cfg.format),
        ));
    }
    if cfg.version != MODEL_VERSION {
        return Err(Error::Incompatible {
            path: cpath,
            found: cfg.version,
            supported: MODEL_VERSION.to_string(),
        });
    }
    Ok(cfg)
}

/// The quantizer trained with the model in `dir`, if its config names `spec` (else `None`: fit
/// one as usual), for `dim` inputs and `metric`.
pub fn trained_quantizer(
    dir: &Path,
    spec: QuantizerSpec,
    dim: usize,
    metric: crate::distance::Metric,
) -> Result<Option<AnyQuantizer>> {
    let cfg = read_config(dir)?;
    if cfg.quantizer.as_deref() != Some(spec.to_string().as_str()) {
        return Ok(None);
    }
    let path = dir.join(QUANTIZER_FILE);
    crate::io::check_readable(&path, u64::MAX)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::corrupt(&path, format!("not a safetensors file: {e}")))?;
    let src = TensorSource::new(&st, &path);
    AnyQuantizer::from_tensors(spec, &src, dim, metric).map(Some)
}

impl Transform for LearnedTransform {
    type Config = LearnedConfig;

    /// Loads the trained model; nothing is fitted here. `train` only fixes the input
    /// dimension, which must be the one the model was trained for.
    fn fit(cfg: &LearnedConfig, train: VectorsRef<'_>, _seed: u64) -> Result<Self> {
        let (me, _) = Self::load(&cfg.path)?;
        if me.dim_in != train.dim() {
            return invalid!(
                "model {} was trained for dimension {}, the data has dimension {}",
                cfg.path.display(),
                me.dim_in,
                train.dim()
            );
        }
        Ok(me)
    }
    fn dim_in(&self) -> usize {
        self.dim_in
    }
    fn dim_out(&self) -> usize {
        self.dim_out
    }
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        self.forward(x, 1, out);
    }
    fn apply_batch(&self, x: VectorsRef<'_>) -> Vectors {
        const ROWS: usize = 256;
        let (d, m) = (self.dim_in, self.dim_out);
        let mut out = vec![0f32; x.len() * m];
        out.par_chunks_mut(ROWS * m)
            .zip(x.as_slice().par_chunks(ROWS * d))
            .for_each(|(o, xs)| self.forward(xs, xs.len() / d, o));
        Vectors::new(m, out).expect("invariant: m >= 1 divides the buffer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub(crate) fn random_model(d: usize, h: usize, m: usize, seed: u64) -> LearnedTransform {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let shapes = LearnedTransform::shapes(d, h, m);
        let t: [Vec<f32>; 8] = std::array::from_fn(|i| {
            let n: usize = shapes[i].iter().product();
            (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect()
        });
        LearnedTransform::from_tensors(d, h, m, 1e-5, t).unwrap()
    }

    #[test]
    fn batch_equals_one_at_a_time_and_outputs_are_unit() {
        let model = random_model(13, 10, 6, 1);
        let x = crate::testutil::gaussian(300, 13, 2);
        let b = model.apply_batch(x.view());
        for i in [0, 1, 255, 256, 299] {
            let mut o = vec![0f32; 6];
            model.apply(x.row(i), &mut o);
            for (a, b) in o.iter().zip(b.row(i)) {
                assert!((a - b).abs() < 1e-6, "row {i}: {a} vs {b}");
            }
            let n: f32 = o.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn save_load_round_trip_is_bit_identical() {
        let dir = tempfile::tempdir().unwrap();
        let model = random_model(9, 8, 4, 3);
        model
            .save(dir.path(), serde_json::json!({"note": "test"}))
            .unwrap();
        let (back, cfg) = LearnedTransform::load(dir.path()).unwrap();
        assert_eq!(cfg.training["note"], "test");
        for (a, b) in model.tensors().iter().zip(back.tensors()) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.2, b.2);
        }
    }

    #[test]
    fn bad_model_dirs_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = LearnedTransform::load(&missing).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(e.to_string().contains("no such model directory"), "{e}");

        let model = random_model(9, 8, 4, 3);
        model.save(dir.path(), serde_json::Value::Null).unwrap();
        // a flipped header byte in the weights
        let w = dir.path().join(WEIGHTS_FILE);
        let mut bytes = std::fs::read(&w).unwrap();
        bytes[3] ^= 0x55;
        std::fs::write(&w, &bytes).unwrap();
        assert!(matches!(
            LearnedTransform::load(dir.path()),
            Err(Error::Corrupt { .. })
        ));
        // a truncated weights file
        model.save(dir.path(), serde_json::Value::Null).unwrap();
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(
            LearnedTransform::load(dir.path()),
            Err(Error::Corrupt { .. })
        ));
        // a config that disagrees with the tensors
        model.save(dir.path(), serde_json::Value::Null).unwrap();
        let c = dir.path().join(CONFIG_FILE);
        let text = std::fs::read_to_string(&c).unwrap();
        std::fs::write(&c, text.replace("\"hidden\": 8", "\"hidden\": 7")).unwrap();
        let e = LearnedTransform::load(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("config.json says 9 -> 7 -> 4"),
            "{e}"
        );
        // a future version
        std::fs::write(&c, text.replace("\"version\": 1", "\"version\": 99")).unwrap();
        assert!(matches!(
            LearnedTransform::load(dir.path()),
            Err(Error::Incompatible { found: 99, .. })
        ));
        // a model for another dimension
        std::fs::write(&c, &text).unwrap();
        let x = crate::testutil::gaussian(10, 12, 1);
        let cfg = LearnedConfig {
            path: dir.path().to_path_buf(),
        };
        let e = LearnedTransform::fit(&cfg, x.view(), 0).unwrap_err();
        assert!(e.to_string().contains("trained for dimension 9"), "{e}");
    }
}
