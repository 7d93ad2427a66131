"""A GGML file for whisper.cpp, from the merged model that export writes.

whisper.cpp (and its Python binding, ``pywhispercpp``) loads the legacy GGML layout that its own
``models/convert-h5-to-ggml.py`` writes: a header of hyperparameters, the mel filters, the byte-level vocabulary,
then every tensor under OpenAI's names (``encoder.blocks.0.attn.query.weight``), 2-D weights in float16 (or quantized
as its ``quantize`` tool would), biases, norms and the positional embeddings in float32. Written here from that
format, with the mel filters from the model's own feature extractor (80 or 128 bins) and the vocabulary from its own
tokenizer, so nothing is fetched from OpenAI's repository. ``q8_0`` quantizes each 2-D weight in blocks of 32 values
(one float16 scale, 32 int8), ggml's reference ``quantize_row_q8_0``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from whisper_lora_pl.decoding.decode import WINDOW_SECONDS
from whisper_lora_pl.model.build import POSITIONS_PER_SECOND
from whisper_lora_pl.model.settings import RunInfo

GgmlType = Literal["f16", "q8_0"]
MAGIC = 0x67676D6C  # "ggml"
#: ggml's tensor types and file types (ggml.h), and the quantization version whisper.cpp's quantize writes
F32, F16, Q8_0 = 0, 1, 8
FILE_TYPES = {"f16": 1, "q8_0": 2 * 1000 + 7}  # GGML_QNT_VERSION x GGML_QNT_VERSION_FACTOR + GGML_FTYPE_MOSTLY_Q8_0
QK8_0 = 32
#: tensors that stay float32 whatever the file type (whisper.cpp's converter and its quantize tool agree)
KEEP_F32 = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}
#: transformers' names -> OpenAI's, as whisper.cpp's convert-h5-to-ggml.py maps them
NAMES = {
    "self_attn.k_proj": "attn.key",
    "self_attn.q_proj": "attn.query",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
    "encoder.layer_norm": "encoder.ln_post",
    "encoder.embed_positions": "encoder.positional_embedding",
    "decoder.layer_norm": "decoder.ln",
    "decoder.embed_positions": "decoder.positional_embedding",
    "decoder.embed_tokens": "decoder.token_embedding",
}


def openai_name(name: str) -> str:
    """``model.encoder.layers.0.self_attn.q_proj.weight`` -> ``encoder.blocks.0.attn.query.weight``."""
    parts = name.removeprefix("model.").split(".")
    if parts[1] == "layers":
        module = NAMES[".".join(parts[3:-1])]
        return ".".join([parts[0], "blocks", parts[2], module, parts[-1]])
    stem = ".".join(parts[:-1])
    if stem in NAMES:
        mapped = NAMES[stem]
        # the positional embeddings are bare tensors in OpenAI's model: no ".weight"
        return mapped if mapped.endswith("positional_embedding") else f"{mapped}.{parts[-1]}"
    return ".".join(parts)


def q8_0(matrix: np.ndarray) -> bytes:
    """Rows of ``matrix`` (float32, a multiple of 32 columns) in ggml's q8_0 blocks."""
    rows, columns = matrix.shape
    if columns % QK8_0:
        raise ValueError(f"q8_0 needs rows of a multiple of {QK8_0} values, got {columns}")
    blocks = matrix.astype(np.float32).reshape(rows, columns // QK8_0, QK8_0)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    values = blocks * inverse
    quantized = (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int8)  # C's roundf
    packed = np.empty((rows, columns // QK8_0), dtype=[("d", "<f2"), ("qs", "i1", QK8_0)])
    packed["d"], packed["qs"] = scale[..., 0].astype(np.float16), quantized
    return packed.tobytes()


def _tensor(out: BinaryIO, name: str, data: np.ndarray, kind: GgmlType) -> None:
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        data = data.reshape(-1, 1)  # whisper.cpp adds them to the convolutions' output as columns
    dims = data.ndim
    if dims < 2 or name in KEEP_F32:
        ttype, payload = F32, data.astype("<f4").tobytes()
    elif kind == "q8_0" and dims == 2:
        ttype, payload = Q8_0, q8_0(data)
    else:
        ttype, payload = F16, data.astype("<f2").tobytes()
    encoded = name.encode("utf-8")
    out.write(struct.pack("<iii", dims, len(encoded), ttype))
    out.write(struct.pack(f"<{dims}i", *reversed(data.shape)))
    out.write(encoded)
    out.write(payload)


def check_context(context_seconds: float) -> None:
    """whisper.cpp pads every window to 30 s, as faster-whisper does: a shorter encoder context does not convert."""
    if context_seconds < WINDOW_SECONDS:
        raise ValueError(
            f"this model was trained with a {context_seconds:g} s encoder context; whisper.cpp pads every window to "
            "30 s: train with model.context_seconds: 30 for a GGML export, or transcribe with "
            "python -m whisper_lora_pl.transcribe"
        )


def to_ggml(merged: str | Path, out: str | Path, kind: GgmlType = "f16") -> Path:
    """Convert an exported merged folder into the GGML file ``out`` that whisper.cpp loads."""
    merged, out = Path(merged), Path(out)
    config = WhisperConfig.from_pretrained(merged)
    check_context(config.max_source_positions / POSITIONS_PER_SECOND)
    model = WhisperForConditionalGeneration.from_pretrained(merged, dtype=torch.float32)
    tokenizer = WhisperTokenizer.from_pretrained(merged)
    filters = WhisperFeatureExtractor.from_pretrained(merged).mel_filters.T.astype("<f4")  # (mels, 201)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    vocabulary = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i < eot)  # whisper.cpp adds the rest
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        header = (
            MAGIC,
            config.vocab_size,
            config.max_source_positions,
            config.d_model,
            config.encoder_attention_heads,
            config.encoder_layers,
            config.max_target_positions,
            config.d_model,
            config.decoder_attention_heads,
            config.decoder_layers,
            config.num_mel_bins,
            FILE_TYPES[kind],
        )
        handle.write(struct.pack("<12i", *header))
        handle.write(struct.pack("<ii", *filters.shape))
        handle.write(filters.tobytes())
        handle.write(struct.pack("<i", len(vocabulary)))
        for _, token in vocabulary:
            text = bytes(byte_of[char] for char in token)
            handle.write(struct.pack("<i", len(text)))
            handle.write(text)
        for name, tensor in model.state_dict().items():
            if name == "proj_out.weight":  # tied to the token embedding
                continue
            _tensor(handle, openai_name(name), tensor.detach().numpy().squeeze(), kind)
    return out


def write_ggml(merged: str | Path, folder: str | Path, kind: GgmlType = "f16") -> Path:
    """``folder/ggml-model-<kind>.bin`` from the merged folder, with the run file and a model card beside it."""
    folder = Path(folder)
    path = to_ggml(merged, folder / f"ggml-model-{kind}.bin", kind)
    info = RunInfo.read(merged)
    if info is not None:
        info.write(folder)
        (folder / "README.md").write_text(model_card(info, path.name), encoding="utf-8")
    return path


def model_card(info: RunInfo, name: str) -> str:
    """How to run the file: whisper.cpp's command line, and pywhispercpp with the evaluation's settings."""
    kwargs = whispercpp_kwargs(info)
    language = kwargs["language"]
    return "\n".join(
        [
            f"# {name}: whisper.cpp",
            "",
            f"A GGML conversion of the merged fine-tuned model ({info.model_name}, LoRA merged into the base it was "
            "trained on), written by `python -m whisper_lora_pl.export CKPT OUT --ggml TYPE`. whisper.cpp pads every "
            "window to 30 s and decodes with its own kernels: its text of a clip may differ from the evaluation's "
            "(docs/export-and-transcribe.md measures how much).",
            "",
            "```bash",
            f"whisper-cli -m {name} -l {language} -nt -mc 0 -f audio.wav",
            "```",
            "",
            "```python",
            "from pywhispercpp.model import Model",
            "",
            f'model = Model("{name}", **{kwargs!r})',
            'segments = model.transcribe("audio.wav")',
            "```",
            "",
        ]
    )


def whispercpp_kwargs(info: RunInfo) -> dict:
    """``pywhispercpp.model.Model`` parameters that decode a clip as the evaluation did as far as whisper.cpp can:
    the trained language (never detected), no timestamps, greedy with the loop guard's temperatures, and no
    conditioning on earlier text."""
    d = info.decoding
    steps = sorted(t for t in d.temperatures)
    return {
        "language": info.language or "en",
        "translate": info.task == "translate",
        "no_timestamps": True,
        "no_context": True,
        "single_segment": True,
        "temperature": steps[0] if steps else 0.0,
        "temperature_inc": (steps[1] - steps[0]) if len(steps) > 1 else 0.0,
        "entropy_thold": d.compression_ratio_threshold or 2.4,
        "logprob_thold": d.logprob_threshold if d.logprob_threshold is not None else -1e9,
        "print_progress": False,
        "print_realtime": False,
    }
