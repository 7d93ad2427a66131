"""CTranslate2 -> Hugging Face conversion, checked against the source tensors and by transcribing real speech."""

import jiwer
import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tests.conftest import REPO
from whisper_lora_pl.convert import convert, read_ctranslate2, resolve_model_name, shipped_sources
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.decoding.text import TextNormalizer

STELLA = "Please call Stella and ask her to bring these things with her from the store."  # espeak-ng en+m3, 130 wpm


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    return convert(shipped_sources("whisper-tiny.en"), tmp_path_factory.mktemp("tiny.en"))


def back_to_ctranslate2(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """The inverse mapping, written independently of the converter: HF weights re-fused under CTranslate2 names."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {}

    def pair(ct2, hf, norm=False):
        out[f"{ct2}/{'gamma' if norm else 'weight'}"] = sd[f"{hf}.weight"]
        out[f"{ct2}/{'beta' if norm else 'bias'}"] = sd[f"{hf}.bias"]

    def fused(ct2, hf, names):
        out[f"{ct2}/weight"] = np.concatenate([sd[f"{hf}.{n}.weight"] for n in names])
        zeros = np.zeros_like(sd[f"{hf}.v_proj.bias"])
        out[f"{ct2}/bias"] = np.concatenate([sd.get(f"{hf}.{n}.bias", zeros) for n in names])

    for side, layers in (("encoder", model.config.encoder_layers), ("decoder", model.config.decoder_layers)):
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        pair(f"{side}/layer_norm", f"model.{side}.layer_norm", norm=True)
        for i in range(layers):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"))
            pair(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            pair(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm", norm=True)
            pair(f"{c}/ffn/linear_0", f"{h}.fc1")
            pair(f"{c}/ffn/linear_1", f"{h}.fc2")
            pair(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm", norm=True)
            if side == "decoder":
                pair(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", f"{h}.encoder_attn", ("k_proj", "v_proj"))
                pair(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                pair(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm", norm=True)
    pair("encoder/conv1", "model.encoder.conv1")
    pair("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/projection/weight"] = sd["proj_out.weight"]
    return out


def test_converted_weights_equal_the_source_tensors(tiny_en):
    source = read_ctranslate2(sorted(shipped_sources("whisper-tiny.en")[0].glob("model.bin*")))
    model = WhisperForConditionalGeneration.from_pretrained(tiny_en)
    rebuilt = back_to_ctranslate2(model)
    tensors = {k: v for k, v in source.items() if v.dtype == np.float16}
    assert tensors.keys() == rebuilt.keys()  # every source weight is used, none invented
    for name, value in tensors.items():
        assert np.array_equal(value.astype(np.float32), rebuilt[name]), name
    assert model.config.encoder_layers == 4 and model.config.d_model == 384 and model.config.vocab_size == 51864


def test_tiny_en_transcribes_english_speech(tiny_en):
    model = WhisperForConditionalGeneration.from_pretrained(tiny_en)
    processor = WhisperProcessor.from_pretrained(tiny_en)
    audio = load_audio(REPO / "tests" / "assets" / "en_stella.flac")
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        text = processor.batch_decode(model.generate(features, max_new_tokens=40), skip_special_tokens=True)[0]
    normalize = TextNormalizer("en")
    assert jiwer.wer(normalize(STELLA), normalize(text)) < 0.2, text
    assert not model.generation_config.is_multilingual


def test_multilingual_generation_config(tmp_path):
    folder = resolve_model_name("pypi:whisper-base", cache_dir=tmp_path)
    assert resolve_model_name("pypi:whisper-base", cache_dir=tmp_path) == folder  # converted once, then reused
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    config = model.generation_config
    assert config.is_multilingual and config.lang_to_id["<|zh|>"] == 50260
    assert config.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert config.no_timestamps_token_id == 50363 and config.decoder_start_token_id == 50258
    assert (model.config.d_model, model.config.encoder_layers, model.config.decoder_attention_heads) == (512, 6, 8)
    tokenizer = WhisperProcessor.from_pretrained(folder).tokenizer
    tokenizer.set_prefix_tokens(language="zh", task="transcribe")
    assert tokenizer.prefix_tokens == [50258, 50260, 50359, 50363]  # the labels' prefix = generate's prompt
    assert model.generate(torch.zeros(1, 80, 3000), language="zh", task="transcribe", max_new_tokens=2).shape[0] == 1


def test_unknown_shipped_model_and_hub_names(tmp_path):
    with pytest.raises(ValueError, match="unknown shipped model"):
        resolve_model_name("pypi:whisper-huge", cache_dir=tmp_path)
    assert resolve_model_name("openai/whisper-large-v2") == "openai/whisper-large-v2"
