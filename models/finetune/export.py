"""Write a fine-tuned transformers Llama model back as a GGUF that llama.cpp loads, keeping the base file's
tokenizer and metadata.

Route: the base GGUF is read with gguf's GGUFReader; every key/value field is copied (tokenizer, chat template,
names, licence, and every llama.* hyper-parameter) except the ones the new file must state itself (file type,
quantization version), and the tensors are the model's weights under llama.cpp's names, F16 for matrices and F32
for norms (what llama.cpp's own converter writes; llama.cpp's quantizer takes it from there, see quantize.py).

A fine-tune keeps its base's architecture, so `export_model` copies the base's llama.* keys verbatim rather than
re-deriving them from the transformers config: a value the config lost or defaulted on the way through
transformers' GGUF loader (rope theta, norm epsilon, context length, rope scaling, any key this code does not know)
would otherwise change the model silently. The config must still agree with the base on the keys that fix tensor
shapes (a mismatch is an error); on the others the base wins and a disagreement is logged.
`write_gguf` with explicit llama.* metadata remains for writing a differently shaped model on a base's tokenizer
(the tests' tiny models).

Q/K permutation: llama.cpp applies rotary embeddings to adjacent pairs of a head's dimensions, Hugging Face's Llama
to its two halves, so llama.cpp's converter permutes the rows of q_proj and k_proj (`permute_qk`) and transformers'
GGUF loader undoes it when it de-quantizes (`unpermute_qk`). Exporting must permute again; k_proj uses the number
of key/value heads (grouped-query attention: 3 for SmolLM2's 9 query heads).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

F16, F32 = "f16", "f32"
_COPY_SKIPPED = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")
# The llama.* keys that fix the tensors' shapes: the model and its base must agree on them.
SHAPE_KEYS = ("llama.vocab_size", "llama.embedding_length", "llama.feed_forward_length", "llama.block_count",
              "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count")


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows -> llama.cpp's rotary layout (llama.cpp's convert_hf_to_gguf `permute`)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's layout -> Hugging Face's (what transformers' GGUF loader does): the inverse of `permute_qk`."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama_metadata(config: Any) -> dict[str, tuple[Any, Any]]:
    """The llama.* hyper-parameters of a transformers LlamaConfig, as GGUF (value, type) pairs."""
    from gguf import GGUFValueType as T

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return {
        "llama.vocab_size": (config.vocab_size, T.UINT32),
        "llama.context_length": (config.max_position_embeddings, T.UINT32),
        "llama.embedding_length": (config.hidden_size, T.UINT32),
        "llama.feed_forward_length": (config.intermediate_size, T.UINT32),
        "llama.block_count": (config.num_hidden_layers, T.UINT32),
        "llama.attention.head_count": (config.num_attention_heads, T.UINT32),
        "llama.attention.head_count_kv": (config.num_key_value_heads, T.UINT32),
        "llama.rope.freq_base": (float(theta), T.FLOAT32),
        "llama.rope.dimension_count": (head_dim, T.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (float(config.rms_norm_eps), T.FLOAT32),
    }


def gguf_tensors(state_dict: Mapping[str, Any], config: Any, dtype: str = F16) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's tensor names, q/k permuted, in the precision the file stores."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out: dict[str, np.ndarray] = {}
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # tied: llama.cpp reuses token_embd when the file has no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        array = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            array = permute_qk(array, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            array = permute_qk(array, config.num_key_value_heads)
        out[name] = array.astype(np.float16 if dtype == F16 and array.ndim > 1 else np.float32)
    return out


def write_gguf(path: str | Path, base: str | Path | Any, tensors: Mapping[str, np.ndarray],
               metadata: Mapping[str, tuple[Any, Any]], dtype: str = F16) -> Path:
    """A GGUF with every key/value of `base` (a path, or a GGUFReader already open on it; minus what `metadata`
    and the tensors restate) and `tensors`."""
    import gguf

    reader = base if isinstance(base, gguf.GGUFReader) else gguf.GGUFReader(str(base))
    if reader.get_field("general.architecture").contents() != "llama":
        raise ValueError(f"{base} is not a Llama-architecture GGUF")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.part")
    writer = gguf.GGUFWriter(str(partial), arch="llama")
    for field in reader.fields.values():
        if field.name.startswith(_COPY_SKIPPED) or field.name in metadata:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for key, (value, value_type) in metadata.items():
        writer.add_key_value(key, value, value_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == F16 else gguf.LlamaFileType.ALL_F32)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out


def architecture_metadata(path: str | Path | Any) -> dict[str, Any]:
    """Every llama.* key of a GGUF (a path or an open GGUFReader) with its value (what `export_model` copies, and
    the tests compare)."""
    import gguf

    reader = path if isinstance(path, gguf.GGUFReader) else gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("llama.")}


def export_model(model: Any, base: str | Path, path: str | Path, dtype: str = F16) -> Path:
    """Write `model` (a merged transformers Llama model fine-tuned from `base`) as a GGUF on `base`'s tokenizer and
    metadata, every llama.* hyper-parameter copied from `base`."""
    import gguf

    tensors = gguf_tensors(model.state_dict(), model.config, dtype)
    reader = gguf.GGUFReader(str(base))  # read once: parsing a tokenizer's arrays takes seconds
    base_names = {t.name for t in reader.tensors}
    if set(tensors) != base_names:
        raise ValueError(f"the model's tensors differ from the base file's: missing {sorted(base_names - set(tensors))[:5]}"
                         f", extra {sorted(set(tensors) - base_names)[:5]}")
    _check_config_against_base(model.config, architecture_metadata(reader), base)
    return write_gguf(path, reader, tensors, {}, dtype)


def _check_config_against_base(config: Any, base_keys: Mapping[str, Any], base: str | Path) -> None:
    """Shape keys must agree (else the tensors would not fit the header); other disagreements are only logged, since
    the base's value is the one written."""
    derived = {key: value for key, (value, _) in llama_metadata(config).items()}
    shape = [key for key in SHAPE_KEYS if key in base_keys and key in derived and base_keys[key] != derived[key]]
    if shape:
        raise ValueError(f"the model's shape differs from its base {base}: "
                         + ", ".join(f"{k} {derived[k]} (base {base_keys[k]})" for k in shape))
    for key, value in derived.items():
        if key in SHAPE_KEYS or key not in base_keys:
            continue
        ours, theirs = value, base_keys[key]
        same = math.isclose(float(ours), float(theirs), rel_tol=1e-6) if isinstance(theirs, float) else ours == theirs
        if not same:
            log.warning("%s: the model's config says %r, the base %s says %r; the base's value is written",
                        key, ours, base, theirs)
