"""Stand-in files for Wan's umT5 tokenizer and its wav2vec2 folder, in the official layouts: the test fixtures'
tiny releases and the served benchmark's random engine (s2v/random_engine.py) load them through the production
loaders. Random weights, a small vocabulary: they make the loaders and the shapes real, not the outputs.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from .text_encoder import TOKENIZER_FOLDER

SAMPLE_RATE = 16000
# umT5's special tokens keep their official ids: <pad> 0, </s> 1, <unk> 2.
_SPECIAL = ("<pad>", "</s>", "<unk>")
_WORDS = (
    "a", "the", "man", "woman", "person", "is", "talking", "speaks", "to", "camera", "smiling", "and", "in",
    "front", "of", "with", "face", "video", "clear", "blurry", "low", "quality", "static",
)  # fmt: skip


def write_tokenizer(folder: Path, subfolder: str = TOKENIZER_FOLDER) -> Path:
    """Write a small umT5-like Unigram tokenizer to `<folder>/<subfolder>/`; returns that folder.

    Whole words for a few common prompt words, single characters for everything else, `<unk>` for the rest;
    SentencePiece-style metaspace splitting and an EOS appended, like the real one.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [(token, 0.0) for token in _SPECIAL] + [("\u2581", -2.0)]
    vocab += [(char, -5.0) for char in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("\u2581" + word, -1.0) for word in _WORDS]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=_SPECIAL.index("<unk>"), byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", _SPECIAL.index("</s>"))]
    )
    out = Path(folder) / subfolder
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "additional_special_tokens": [], **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out


_CTC_VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 5, "e": 6, "i": 7, "o": 8, "u": 9, "s": 10,
              "t": 11}


def write_wav2vec2(folder: Path | str, hidden_size: int, num_layers: int, seed: int = 0,
                   release_shape: bool = False) -> Path:
    """A random wav2vec2 (stable layer norm, like XLSR-53) saved as a Hugging Face folder with its processor files.

    `release_shape` keeps XLSR-53's heads, feed-forward and convolutions for benchmarks.
    """
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # XLSR-53 (wav2vec2-large): 16 heads, 4096 feed-forward; its convolutions are transformers' defaults.
    narrow = dict(num_attention_heads=16, intermediate_size=4096) if release_shape else dict(
        num_attention_heads=2, intermediate_size=2 * hidden_size, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2)
    config = Wav2Vec2Config(hidden_size=hidden_size, num_hidden_layers=num_layers, vocab_size=len(_CTC_VOCAB),
                            feat_extract_norm="layer", do_stable_layer_norm=True, **narrow)
    torch.manual_seed(seed)
    Wav2Vec2ForCTC(config).eval().save_pretrained(folder)
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps(_CTC_VOCAB), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    # Saved one by one: the official folder has preprocessor_config.json and the tokenizer files, no
    # processor_config.json (which Wav2Vec2Processor.save_pretrained would write instead).
    extractor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
