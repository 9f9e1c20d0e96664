"""Quantize an exported F16 GGUF with llama.cpp's own quantizer (`llama_model_quantize` via llama-cpp-python).

Which type suits a 576-wide model: k-quants (Q4_K, Q5_K, Q6_K) quantize rows in super-blocks of 256 values, and
576 = 2.25 x 256, so llama.cpp cannot use them for any tensor whose rows are 576 wide (q/k/v/o, gate, up, the
embeddings): it falls back to a legacy 32-value-block type for those (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0)
and only ffn_down (1536-wide rows) gets the k-quant, so a "K" file is a mix that buys nothing over the legacy types.
The legacy types (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, blocks of 32) fit 576 exactly. As in llama.cpp's default, the tied
embedding matrix (also the output layer) is quantized as the output tensor: Q6_K, which falls back to Q8_0.

Measured on a fine-tuned SmolLM2 (LoRA, 900 s on MovieLens; `python -m bench.finetune_choices quant`), 20
held-out pairs x 2 prompt modes, free greedy generation:

    type   MB     agreement with F16   exact match   hit rate (knowledge)
    F16    270.9  1.000                0.875         0.165
    Q8_0   144.8  0.975                0.850         0.165
    Q5_1   111.6  0.450                0.725         0.048
    Q5_0   105.0  0.825                0.775         0.106
    Q4_1    98.4  0.025                0.075         0.000   (the base file's own type)
    Q4_0    91.7  0.425                0.750         0.106

A fine-tune's update is small next to 4-5-bit rounding steps, so those types partly undo it; Q4_1 undoes nearly
all of it, because the de-quantized base weights sit exactly on Q4_1's grid and an update under half a step rounds
straight back to the base (its answers are the base model's). Q8_0 keeps the answers. Hence the default EXPLORER_FINETUNE_QUANT_TYPE=Q8_0 (+46 MB over the Q4_1 base).
"""

from __future__ import annotations

import os
from pathlib import Path

QUANT_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16")


def ftype_of(name: str) -> int:
    import llama_cpp

    key = name.upper()
    if key not in QUANT_TYPES:
        raise ValueError(f"unsupported quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)} "
                         "(k-quants need rows divisible by 256, which a 576-wide model does not have)")
    return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{key}"))


def quantize(source: str | Path, target: str | Path, quant_type: str, threads: int = 2,
             allow_requantize: bool = False) -> Path:
    """Quantize `source` (F16/F32 GGUF; any type with `allow_requantize`, which de-quantizes first) into `target`
    with llama.cpp's quantizer; atomic (written beside it)."""
    import llama_cpp

    from models.llama_output import route_llama_output

    route_llama_output()  # the quantizer's per-tensor log goes to DEBUG
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(quant_type)
    params.nthread = threads
    params.allow_requantize = allow_requantize
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({source} -> {quant_type}) failed with code {code}")
    partial.replace(out)
    return out
