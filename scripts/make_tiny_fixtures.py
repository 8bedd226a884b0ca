#!/usr/bin/env python3
"""Writes the tiny reference models and their expected vectors for rewa-embed's tests.

    python scripts/make_tiny_fixtures.py crates/rewa-embed/tests/fixtures

Each model is built from the reference classes themselves, with seeded random weights:
`transformers.BertModel(BertConfig(...))` / `transformers.MPNetModel(MPNetConfig(...))`, a
WordPiece tokenizer over a small vocabulary (`BertTokenizerFast` / `MPNetTokenizerFast`, the
same tokenizer.json layouts as all-MiniLM-L6-v2 and all-mpnet-base-v2), wrapped as
`SentenceTransformer(modules=[Transformer, Pooling, (Normalize)])` and saved with `.save(dir)`.
The saved directory is then loaded back with `SentenceTransformer(dir)` and asked to
`encode` fixed texts; `expected.json` holds the texts, the word-piece ids the reference
tokenizer gives each (after truncation, special tokens included) and the vectors.

Run once; the output is committed, so the Rust tests never need Python. Needs torch,
transformers and sentence-transformers (the versions used are written into expected.json).
"""

import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
except ImportError:
    from sentence_transformers.models import Normalize, Pooling, Transformer
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    MPNetConfig,
    MPNetModel,
    MPNetTokenizerFast,
)

HIDDEN = 16
LAYERS = 2
INTERMEDIATE = 32
# 130 word pieces fit (MPNet reserves pad_token_id + 1 = 2 rows), enough for the longest
# case below to reach every relative-position bucket, including the last (distance >= 128).
MAX_POSITIONS = 132
MAX_SEQ_LENGTH = 16  # the saved default: several texts below are cut to it
LONG_SEQ_LENGTH = 130

# Whole words and suffix pieces shared by both vocabularies (after the special tokens).
WORDS = (
    "the an cat dog sat on mat is are was big red small blue house tree run walk jump "
    "quick brown fox over lazy and of to in it this that with for man woman eat food play "
    "music sleep car road fast slow cafe naive 猫 hello world"
).split()
PIECES = ["##s", "##ing", "##ed", "##er", "##ly", "##e", "##t"]
PUNCT = list(".,!?'-():;\"")
LETTERS = list("abcdefghijklmnopqrstuvwxyz")  # "a" among them; no "##" letters, so unknown words stay [UNK]

TEXTS = [
    "the cat sat on the mat",
    "A dog.",
    "The QUICK Brown Fox jumps over the lazy dog, and the cat sleeps on a big red mat.",
    "cat",
    "zebras xylophone quux",  # words the vocabulary cannot spell -> [UNK]
    "Hello, World! Is this (really) a test?",
    "a naïve man eats food at the café",  # accents stripped by the lower-casing normaliser
    "猫 and the dog 🐕 play music",  # a CJK character in the vocabulary, an emoji not
    "walking, walked; runs - jumper's quickly!",
    "  the   small blue house\tin the tree\n ",
]


def long_text(n_words: int, offset: int) -> str:
    return " ".join(WORDS[(offset + 5 * i) % len(WORDS)] for i in range(n_words))


# Texts for the second case, at LONG_SEQ_LENGTH: one past it, one just under, and short ones
# in the same batches (so padding runs across most of the position range).
LONG_TEXTS = [
    long_text(160, 0),
    long_text(100, 3),
    "the cat sat on the mat",
    long_text(40, 5) + " zebra!",
    "A dog.",
]


def vocab(specials_front, specials_back=()):
    words = list(specials_front) + PUNCT + LETTERS + WORDS + PIECES + list(specials_back)
    assert len(set(words)) == len(words), "duplicate word piece"
    return {w: i for i, w in enumerate(words)}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrites every parameter with seeded values large enough that attention is far from
    uniform and the position terms matter (HF's own init, std 0.02 and zero biases, would make
    the tiny model nearly blind to mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif "relative_attention_bias" in name:
                p.copy_(1.0 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)


def build(arch: str, seed: int, pooling: str, normalize: bool, out: Path) -> None:
    torch.manual_seed(seed)
    if arch == "bert":
        v = vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok = BertTokenizerFast(vocab=v, do_lower_case=True)
        config = BertConfig(
            vocab_size=len(v),
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            intermediate_size=INTERMEDIATE,
            hidden_act="gelu",
            max_position_embeddings=MAX_POSITIONS,
            type_vocab_size=2,
            layer_norm_eps=1e-12,
            pad_token_id=0,
        )
        model = BertModel(config)
    else:
        # all-mpnet-base-v2's layout: <s> <pad> </s> <unk> first, [UNK] (the WordPiece unknown)
        # further in, <mask> last.
        v = vocab(["<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[UNK]"], ["<mask>"])
        tok = MPNetTokenizerFast(vocab=v, do_lower_case=True)
        config = MPNetConfig(
            vocab_size=len(v),
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            intermediate_size=INTERMEDIATE,
            hidden_act="gelu",
            max_position_embeddings=MAX_POSITIONS,
            relative_attention_num_buckets=32,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        model = MPNetModel(config)
    randomize(model, seed)
    model.eval()

    with tempfile.TemporaryDirectory() as hf_dir:
        model.save_pretrained(hf_dir, safe_serialization=True)
        tok.save_pretrained(hf_dir)
        transformer = Transformer(hf_dir, max_seq_length=MAX_SEQ_LENGTH)
        modules = [transformer, Pooling(HIDDEN, pooling_mode=pooling)]
        if normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        if out.exists():
            shutil.rmtree(out)
        st.save(str(out), create_model_card=False)

    # What gets compared is what a user of the saved directory gets.
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == MAX_SEQ_LENGTH
    cases = []
    for max_len, texts in [(MAX_SEQ_LENGTH, TEXTS), (LONG_SEQ_LENGTH, LONG_TEXTS)]:
        st.max_seq_length = max_len
        features = st.preprocess(texts)
        ids, mask = features["input_ids"], features["attention_mask"]
        token_ids = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        assert max(len(t) for t in token_ids) <= max_len
        vectors = st.encode(texts, batch_size=4, convert_to_numpy=True)
        assert vectors.dtype == np.float32 and vectors.shape == (len(texts), HIDDEN)
        cases.append(
            {
                "max_seq_length": max_len,
                "batch_size": 4,
                "texts": texts,
                "token_ids": token_ids,
                # each float32 value exactly, as the double it widens to
                "vectors": [[float(x) for x in row] for row in vectors],
            }
        )
    expected = {
        "made_by": "python scripts/make_tiny_fixtures.py crates/rewa-embed/tests/fixtures",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "arch": arch,
        "seed": seed,
        "pooling": pooling,
        "normalize": normalize,
        "cases": cases,
    }
    with open(out / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    build("bert", 1, "mean", True, root / "tiny-bert")
    build("bert", 2, "cls", False, root / "tiny-bert-cls")
    build("mpnet", 3, "mean", True, root / "tiny-mpnet")
    build("mpnet", 4, "cls", True, root / "tiny-mpnet-cls")


if __name__ == "__main__":
    main()
