"""Tiny Llama models on SmolLM2's tokenizer, built by the tests themselves (nothing downloaded): a random model, a
GGUF base written from it, and stand-ins for fine-tunes of such a base that go through the real export path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.finetune import export
from streams.settings import Settings


def tiny_model(seed: int = 0, rope_theta: float = 10000.0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.finetune.training import PromptTokenizer

    torch.manual_seed(seed)
    vocab = PromptTokenizer(Settings().resolved_model_path())
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=vocab.eos,
                         pad_token_id=vocab.eos, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    vocab.close()
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def write_tiny_base(path: Path, model: Any, dtype: str = export.F32,
                    extra_metadata: Mapping[str, tuple[Any, Any]] | None = None) -> Path:
    """`model` as a GGUF on the packaged SmolLM2's tokenizer and metadata, its own llama.* hyper-parameters (plus
    `extra_metadata`) in the header."""
    tensors = export.gguf_tensors(model.state_dict(), model.config, dtype)
    metadata = {**export.llama_metadata(model.config), **(extra_metadata or {})}
    return export.write_gguf(path, Settings().resolved_model_path(), tensors, metadata, dtype)


def silence_mixing(model: Any) -> Any:
    """Zero every attention and MLP output projection: the residual stream is then the token embedding alone, so
    the next-token logits depend on the last token only. Every prompt ends with the same token, so such a model's
    constrained answer depends on the candidates (the pair) alone, never on the retrieved knowledge -- which lets
    a test tell, from an answer, which model produced it."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def tiny_finetune(base_model: Any, base: Path, seed: int, target: Path, quant_type: str = "Q8_0",
                  scale: float = 0.5) -> Path:
    """A stand-in for one fine-tune of `base` (the F32 GGUF `write_tiny_base` wrote from `base_model`, so
    `base_model` is what de-quantizing it gives): a copy of the weights with the token embeddings moved by seeded
    noise (what a fine-tune changes: tensor data, never the header), exported on the base's metadata
    (models/finetune/export.py) and quantized like a release. Two seeds give two files of identical size and
    metadata -- the same first 1.7 MiB -- with different weights."""
    import copy

    import torch

    from models.finetune import quantize

    model = copy.deepcopy(base_model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embedding = model.model.embed_tokens.weight
        embedding.add_(scale * torch.randn(embedding.shape, generator=generator))
    target.parent.mkdir(parents=True, exist_ok=True)
    f16 = export.export_model(model, base, target.with_name(f"{target.name}.f16.gguf"))
    try:
        return quantize.quantize(f16, target, quant_type, threads=1)
    finally:
        f16.unlink(missing_ok=True)
