import bitsandbytes as bnb
import pytest
import torch

from whisper_lora_pl.model.build import LoraSettings, build_whisper_lora, count_parameters, quantization_config
from whisper_lora_pl.model.settings import RunInfo
from whisper_lora_pl.training.module import WhisperLoRA, warmup_then

# tiny model: d_model 64, 2 encoder + 2 decoder layers. LoRA r=8 on q_proj and v_proj adds r * (64 + 64) = 1024
# weights per projection; encoder layers have 2 (self-attention), decoder layers 4 (self- and cross-attention).
TINY_LORA_PARAMS = (2 * 2 + 2 * 4) * 8 * (64 + 64)


def INT8(model: str) -> RunInfo:
    return RunInfo(model, quantization="int8")


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_features": torch.randn(2, 80, 3000, generator=generator),
        "labels": torch.tensor([[50260, 50359, 50363, 400, 500, 50257], [50260, 50359, 50363, 600, 50257, -100]]),
    }


@pytest.mark.parametrize(
    ("quantization", "layer_type"),
    [("int8", bnb.nn.Linear8bitLt), ("nf4", bnb.nn.Linear4bit), ("none", torch.nn.Linear)],
)
def test_builder_quantizes_the_base_and_trains_only_lora(tiny_model, quantization, layer_type):
    model = build_whisper_lora(RunInfo(tiny_model, quantization=quantization, lora=LoraSettings()))
    trainable, _ = count_parameters(model)
    assert trainable == TINY_LORA_PARAMS == 12_288
    q_proj = model.base_model.model.model.encoder.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, layer_type)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_lora_settings_change_the_count(tiny_model):
    settings = LoraSettings(r=4, target_modules=("q_proj", "k_proj", "v_proj", "out_proj"))
    trainable, _ = count_parameters(build_whisper_lora(RunInfo(tiny_model, quantization="int8", lora=settings)))
    assert trainable == (2 * 4 + 2 * 8) * 4 * (64 + 64)


def lora_grads_after_one_step(model) -> dict[str, float]:
    """LoRA B starts at zero, so A gets no gradient on step 0: take one step, then look at the gradients."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        optimizer.zero_grad()
        model(**batch(step)).loss.backward()
        if step == 0:
            optimizer.step()
    return {
        n: p.grad.abs().sum().item() if p.grad is not None else 0.0 for n, p in model.named_parameters() if "lora_" in n
    }


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_every_lora_matrix_gets_a_gradient_with_checkpointing(tiny_model, reentrant):
    model = build_whisper_lora(INT8(tiny_model), gradient_checkpointing=True, reentrant_checkpointing=reentrant)
    grads = lora_grads_after_one_step(model)
    assert len(grads) == 24 and any(".encoder." in n for n in grads)
    assert [n for n, g in grads.items() if g == 0.0] == []


def test_checkpointing_is_non_reentrant_in_encoder_and_decoder(tiny_model):
    """peft passes {} as checkpointing kwargs, which torch (2.13 too) reads as reentrant: with reentrant
    checkpointing and no input hook the encoder's adapters get no gradient. We ask for non-reentrant explicitly."""
    model = build_whisper_lora(INT8(tiny_model), gradient_checkpointing=True)
    whisper = model.base_model.model.model
    layers = [*whisper.encoder.layers, *whisper.decoder.layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    assert all(layer._gradient_checkpointing_func.keywords == {"use_reentrant": False} for layer in layers)
    assert not any(
        layer.gradient_checkpointing
        for layer in build_whisper_lora(
            INT8(tiny_model), gradient_checkpointing=False
        ).base_model.model.model.encoder.layers
    )


def test_schedule_is_the_trainers_at_every_step():
    """transformers' linear schedule: lr 0 at step 0, s/w during warmup (ours once had (s+1)/(w+1): 5% more)."""

    def factors(schedule, warmup, total):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = warmup_then(optimizer, schedule, warmup, total)
        out = []
        for _ in range(total + 1):
            out.append(round(optimizer.param_groups[0]["lr"], 4))
            optimizer.step()
            scheduler.step()
        return out

    assert factors("linear", 4, 14) == [0.0, 0.25, 0.5, 0.75, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    assert factors("constant", 2, 5) == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert factors("cosine", 2, 6) == [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0]
    assert factors("linear", 0, 2) == [1.0, 0.5, 0.0]


def test_module_refuses_true_half_precision(tiny_model):
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", logger=False)
    module = WhisperLoRA(tiny_model)
    module.trainer = trainer
    with pytest.raises(ValueError, match="bf16-mixed"):
        module.configure_model()


def test_module_generates_and_scores(tiny_model):
    module = WhisperLoRA(tiny_model, max_new_tokens=3)
    module.configure_model()
    module.configure_model()  # idempotent: the base is loaded once
    module.eval()
    features = batch()["input_features"]
    texts = module.transcribe(features)
    # the reference: transformers' plain greedy generate with the trained prompt and the same 3-token cap
    plain = module.model.generate(
        input_features=features, language="zh", task="transcribe", max_new_tokens=3, do_sample=False
    )
    assert texts == module.processor.batch_decode(plain, skip_special_tokens=True)
    assert len(module.decode(features)[0].tokens) == 3  # a random model never ends: it stops at its budget


def test_large_v2_recipe_adapter_count():
    """The README's checkpoint size: LoRA r=8 on q_proj/v_proj of whisper-large-v2 (built on the meta device)."""
    from peft import get_peft_model
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
    )
    with torch.device("meta"):
        base = WhisperForConditionalGeneration(config)
    assert sum(p.numel() for p in base.parameters()) == 1_543_304_960
    trainable, _ = count_parameters(get_peft_model(base, LoraSettings().peft_config()))
    assert trainable == (32 * 2 + 32 * 4) * 8 * (1280 + 1280) == 3_932_160  # x 12 bytes with AdamW: 47.2 MB


def test_training_steps_run_in_train_mode(tiny_model):
    """from_pretrained hands back eval mode and Lightning keeps submodule modes: checkpointing and LoRA dropout
    only act in train mode, so every submodule must be training during training_step."""
    import lightning as L
    from torch.utils.data import DataLoader

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(all(m.training for m in module.model.modules()))

    items = [{"input_features": torch.randn(80, 3000), "labels": torch.tensor([50260, 50359, 50363, 400, 50257])}] * 2
    loader = DataLoader(items, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, callbacks=[Probe()])
    trainer.fit(WhisperLoRA(tiny_model, warmup_steps=0), train_dataloaders=loader)
    assert seen == [True, True]


def test_nf4_computes_in_what_the_device_has(monkeypatch):
    """bfloat16 where the GPU has it, float16 on older GPUs (T4, V100: no bfloat16), float32 on the CPU."""
    assert quantization_config("nf4", "cpu").bnb_4bit_compute_dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert quantization_config("nf4", "cuda").bnb_4bit_compute_dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert quantization_config("nf4", "cuda:1").bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("int8", "cuda").load_in_8bit and quantization_config("none") is None


@pytest.mark.parametrize(("decoder_layers", "expected"), [(32, 3_932_160), (4, 1_638_400)], ids=["large-v3", "turbo"])
def test_large_v3_and_turbo_recipe_adapter_counts(decoder_layers, expected):
    """The v3 recipes' comments: large-v3 (128 mel bins, 51866 tokens) and large-v3-turbo (4 decoder layers)."""
    from peft import get_peft_model
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        decoder_layers=decoder_layers,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
    )
    with torch.device("meta"):
        base = WhisperForConditionalGeneration(config)
    trainable, _ = count_parameters(get_peft_model(base, LoraSettings().peft_config()))
    assert trainable == (32 * 2 + decoder_layers * 4) * 8 * (1280 + 1280) == expected
