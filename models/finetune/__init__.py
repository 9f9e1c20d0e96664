"""Periodic fine-tuning of the novel-cluster LLM (the fine-tuning half of the hybrid update strategy).

One cycle (`cycle.run_cycle`, `explorer finetune`): curate supervised examples from a training period's transition
counts (curation) -> fine-tune the base GGUF de-quantized in PyTorch (training) -> write it back as GGUF with the
base file's tokenizer and metadata (export) -> quantize with llama.cpp's own quantizer (quantize) -> quality gates on
a time-later held-out period (gates) -> release into the versioned model registry (registry), which the serving side
reads through `registry.current_model_path(settings)`.

Modules import torch/transformers lazily where they can, so the registry stays cheap to import for the serving side.
"""
