"""attnc as a HuggingFace transformers attention implementation.

    import attnc.hf
    attnc.hf.register()                                   # name "attnc"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attnc")

In: transformers' calls of an attention function (module, query, key, value [B, H, L, D],
attention_mask, scaling, dropout) and of a mask function (batch size, lengths, offsets,
the 2D padding mask, the mask pattern). Out: the attention output [B, L, H, D] from an
attnc variant: causal (or bidirectional) attention over the keys that are not padding,
with GQA handled by the kernel (no repeat of k/v).

The mask function does not build the [B, 1, Lq, Lkv] boolean mask SDPA takes: it hands
the attention function an :class:`AttncMask` (the padding mask as int32 [B, Lkv] and the
query offset), which the variant reads as a captured tensor and a param. Mask patterns
other than causal and bidirectional (sliding windows, packed sequences, custom and/or
masks) raise ``NotImplementedError`` rather than being silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

import attnc

SOURCE = """
// transformers' causal language-model attention: queries are the last Lq of the Lkv
// positions (offset = q_offset - kv_offset), keys that are padding are masked
param offset: i32;
tensor valid: i32[B, KV];
mask causal(b, h, q, kv)  { kv <= q + offset }
mask not_pad(b, h, q, kv) { valid[b, kv] != 0 }
attention hf_causal { mask = causal; }
attention hf_causal_padded { mask = causal & not_pad; }
attention hf_bidirectional { }
attention hf_bidirectional_padded { mask = not_pad; }
"""

_module = attnc.compile(SOURCE, name="attnc/hf.attn")
_attn = {name: _module.attention(name) for name in _module.names}


@dataclasses.dataclass
class AttncMask:
    """What the attention function needs to know about the mask of one forward."""

    causal: bool
    offset: int
    valid: Optional[torch.Tensor]  # int32 [B, Lkv]; None: no padding


def mask_function(
    batch_size,
    q_length,
    kv_length,
    q_offset=0,
    kv_offset=0,
    mask_function=None,
    attention_mask=None,
    **kwargs,
):
    from transformers import masking_utils as mu

    if mask_function is None or mask_function is mu.causal_mask_function:
        causal = True
    elif mask_function is getattr(mu, "bidirectional_mask_function", None):
        causal = False
    else:
        raise NotImplementedError(
            f"attnc.hf: mask pattern {getattr(mask_function, '__name__', mask_function)!r} is not supported "
            "(causal and bidirectional are); write the variant as an .attn file instead"
        )
    valid = None
    if attention_mask is not None:
        pad = attention_mask[:, kv_offset : kv_offset + kv_length]
        if pad.shape[-1] != kv_length:
            raise NotImplementedError("attnc.hf: the padding mask does not cover the key/value length")
        if not bool(pad.all()):
            valid = pad.to(torch.int32).contiguous()
    offset = q_offset - kv_offset
    if isinstance(offset, torch.Tensor):
        offset = int(offset.item())
    return AttncMask(causal=causal, offset=int(offset), valid=valid)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs,
):
    if dropout and module.training:
        raise NotImplementedError("attnc.hf: attention dropout is not supported")
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise NotImplementedError("attnc.hf: softcap and sliding windows need their own .attn variant")
    if attention_mask is None:
        # no mask object (e.g. a module called on its own): causal per the module
        causal = getattr(module, "is_causal", True)
        mask = AttncMask(causal=causal, offset=key.shape[2] - query.shape[2], valid=None)
    elif isinstance(attention_mask, AttncMask):
        mask = attention_mask
    else:
        raise NotImplementedError(
            "attnc.hf: got a prepared attention mask; register the mask function too (attnc.hf.register does)"
        )
    name = "hf_causal" if mask.causal else "hf_bidirectional"
    caps = {}
    if mask.causal:
        caps["offset"] = mask.offset
    if mask.valid is not None:
        name += "_padded"
        caps["valid"] = mask.valid
    out = _attn[name](query, key, value, scale=scaling, **caps)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = "attnc") -> str:
    """Registers attnc's attention and mask functions with transformers under `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
    return name
