//! The whole pipeline on tiny models with seeded random weights, written as sentence-transformers
//! directories in a temporary folder, so it runs without downloaded models (CI included):
//! loading, tokenizing, truncation, length-sorted padded batches, masked pooling and
//! normalisation, for both architectures. What these check holds for any weights: a text's
//! vector does not depend on the texts it is batched with, and truncation equals cutting the
//! text by hand. (Parity with sentence-transformers itself is `parity.rs`, on the real models.)

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rewa_embed::Embedder;
use std::path::Path;

const WORDS: [&str; 14] = [
    "[CLS]", "[PAD]", "[SEP]", "[UNK]", "the", "cat", "dog", "sat", "on", "mat", "a", "big", "red",
    "##s",
];

/// A WordPiece tokenizer.json over `WORDS` in the layout of BERT's (lower-casing normaliser,
/// BERT pre-tokenizer, [CLS] A [SEP]), with the fixed padding and truncation HF files carry
/// (which the embedder must replace).
fn tokenizer_json(lowercase: bool) -> String {
    let vocab: Vec<String> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| format!("\"{w}\": {i}"))
        .collect();
    let added: Vec<String> = WORDS[..4]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                r#"{{"id": {i}, "content": "{w}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#
            )
        })
        .collect();
    format!(
        r###"{{
  "version": "1.0",
  "truncation": {{"max_length": 4, "strategy": "LongestFirst", "stride": 0}},
  "padding": {{"strategy": {{"Fixed": 8}}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 1, "pad_type_id": 0, "pad_token": "[PAD]"}},
  "added_tokens": [{}],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": {lowercase}}},
  "pre_tokenizer": {{"type": "BertPreTokenizer"}},
  "post_processor": {{"type": "TemplateProcessing",
    "single": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}],
    "pair": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 1}}}}],
    "special_tokens": {{"[CLS]": {{"id": "[CLS]", "ids": [0], "tokens": ["[CLS]"]}}, "[SEP]": {{"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}}}}}},
  "decoder": null,
  "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {{{}}}}}
}}"###,
        added.join(", "),
        vocab.join(", "),
        lowercase = lowercase
    )
}

/// Seeded values in [-0.5, 0.5) (splitmix64), so every run writes the same weights.
fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Writes a tiny model directory of `arch` ("bert" or "mpnet") with `pooling` into `dir`.
fn tiny_model(dir: &Path, arch: &str, pooling: &str) {
    let config = format!(
        r#"{{"model_type": "{arch}", "vocab_size": {}, "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "max_position_embeddings": 24, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-5, "pad_token_id": 1,
            "relative_attention_num_buckets": 32}}"#,
        WORDS.len()
    );
    std::fs::write(dir.join("config.json"), &config).unwrap();
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        format!(r#"{{"word_embedding_dimension": 8, "pooling_mode_{pooling}": true}}"#),
    )
    .unwrap();
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 12, "do_lower_case": false}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(true)).unwrap();

    // Let the model's own loader name and shape every weight, then overwrite them all with
    // seeded values (VarMap's initial values come from an unseeded generator).
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    match arch {
        "bert" => {
            let cfg = serde_json::from_str(&config).unwrap();
            rewa_embed::bert::BertModel::load(vb, &cfg).unwrap();
        }
        _ => {
            let cfg = serde_json::from_str(&config).unwrap();
            rewa_embed::mpnet::MpNetModel::load(vb, &cfg).unwrap();
        }
    }
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let shape = var.shape().clone();
        let v = Tensor::from_vec(
            seeded(shape.elem_count(), i as u64 + 1),
            shape,
            &Device::Cpu,
        )
        .unwrap();
        var.set(&v).unwrap();
    }
    drop(data);
    varmap.save(dir.join("model.safetensors")).unwrap();
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "{what}: max difference {err}\n{a:?}\n{b:?}");
}

fn check_arch(arch: &str) {
    let texts = [
        "the cat sat on the mat",
        "a dog",
        "The big red cats sat on a big red mat the end",
        "cat",
        "xyz unknown words here",
    ];
    for pooling in ["mean_tokens", "cls_token", "max_tokens"] {
        let t = tempfile::tempdir().unwrap();
        tiny_model(t.path(), arch, pooling);
        let mut e = Embedder::load(t.path()).unwrap();
        assert_eq!((e.dim(), e.max_seq_len()), (8, 12));
        // All five in one batch (padded to the longest) and each alone give the same rows.
        e.set_batch_size(5).unwrap();
        let together = e.embed_counted(&texts).unwrap();
        assert_eq!(together.vectors.len(), texts.len());
        for (i, text) in texts.iter().enumerate() {
            let alone = e.embed(&[text]).unwrap();
            close(
                together.vectors.row(i),
                alone.row(0),
                &format!("{arch} {pooling} {text:?}"),
            );
            let norm: f32 = alone.row(0).iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{arch} {pooling}: norm {norm}");
        }
        // "the big red cat ##s sat on a big red mat the end" is 12 word pieces + 2: cut to 12.
        let lens: Vec<usize> = e.tokenize(&texts).unwrap().iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [8, 4, 12, 3, 6],
            "{arch}: the tokenizer.json's own truncation must not apply"
        );
        assert_eq!(together.tokens, lens.iter().sum::<usize>());
        // Truncation keeps the first word pieces, as cutting the text by hand would.
        e.set_max_seq_len(5).unwrap();
        let cut = e.embed(&["the cat sat on the mat"]).unwrap();
        e.set_max_seq_len(12).unwrap();
        let by_hand = e.embed(&["the cat sat"]).unwrap();
        close(
            cut.row(0),
            by_hand.row(0),
            &format!("{arch} {pooling} truncation"),
        );
        assert!(e.set_max_seq_len(100).is_err(), "past the position table");
    }
}

#[test]
fn tiny_bert_batches_pads_and_truncates_like_one_text_at_a_time() {
    check_arch("bert");
}

#[test]
fn tiny_mpnet_batches_pads_and_truncates_like_one_text_at_a_time() {
    check_arch("mpnet");
}

#[test]
fn do_lower_case_lowers_texts_before_the_tokenizer() {
    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path(), "bert", "mean_tokens");
    // A tokenizer that keeps case: "CAT" is not in the vocabulary.
    std::fs::write(t.path().join("tokenizer.json"), tokenizer_json(false)).unwrap();
    let unk = 3;
    let e = Embedder::load(t.path()).unwrap();
    assert_eq!(e.tokenize(&["the CAT"]).unwrap(), [vec![0, 4, unk, 2]]);
    std::fs::write(
        t.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 12, "do_lower_case": true}"#,
    )
    .unwrap();
    let e = Embedder::load(t.path()).unwrap();
    assert_eq!(e.tokenize(&["the CAT"]).unwrap(), [vec![0, 4, 5, 2]]);
}
