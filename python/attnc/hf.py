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
query offset), which the variant reads as a captured tensor and a param. Every other mask
pattern transformers builds (sliding windows — Mistral, Gemma, Qwen —, chunked attention,
blockwise and packed-sequence masks, its and/or compositions) is ported as it is by
``attnc.flex`` — transformers' mask functions are FlexAttention ``mask_mod``s — with the
padding mask and the offsets composed in as its ``flex_attention_mask`` does; a
``softcap`` (Gemma 2) becomes the ported score ``softcap * tanh(s / softcap)``. As with
SDPA, a ``sliding_window`` keyword is carried by the mask, not by the call.
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
    """What the attention function needs to know about the mask of one forward: causal
    or bidirectional with padding (``offset``, ``valid``), or any other pattern as a
    FlexAttention ``mask_mod`` (``mask_mod``; offsets and padding composed in), ported
    per score (``ports``: keyed by the soft-cap, None without)."""

    causal: bool
    offset: int
    valid: Optional[torch.Tensor]  # int32 [B, Lkv]; None: no padding
    mask_mod: Optional[object] = None
    ports: dict = dataclasses.field(default_factory=dict)

    def port(self, softcap: Optional[float]):
        p = self.ports.get(softcap)
        if p is None:
            import attnc.flex

            score_mod = None
            if softcap is not None:
                cap = float(softcap)

                def score_mod(score, b, h, q_idx, kv_idx):
                    return cap * torch.tanh(score / cap)

            p = self.ports[softcap] = attnc.flex.port(score_mod, self.mask_mod)
        return p


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
        # any other pattern: transformers' mask functions are FlexAttention mask_mods;
        # compose the padding and the offsets as its flex_attention_mask does, port it
        if attention_mask is not None and not bool(attention_mask.all()):
            padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
            mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding))
        mask_function = mu.add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
        return AttncMask(causal=False, offset=0, valid=None, mask_mod=mask_function)
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
    softcap = kwargs.get("softcap")
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
    if mask.mask_mod is not None or softcap is not None:
        if mask.mask_mod is None:
            # causal / bidirectional with padding as a mask_mod, for the soft-cap's port
            mask = AttncMask(False, 0, None, mask_mod=_as_mask_mod(mask))
        out = mask.port(softcap)(query, key, value, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    name = "hf_causal" if mask.causal else "hf_bidirectional"
    caps = {}
    if mask.causal:
        caps["offset"] = mask.offset
    if mask.valid is not None:
        name += "_padded"
        caps["valid"] = mask.valid
    out = _attn[name](query, key, value, scale=scaling, **caps)
    return out.transpose(1, 2).contiguous(), None


def _as_mask_mod(mask: AttncMask):
    """The causal / bidirectional mask of ``mask`` (offset, padding) as a mask_mod."""
    offset, valid = mask.offset, mask.valid

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (kv_idx <= q_idx + offset) if mask.causal else (kv_idx >= 0)
        return keep & (valid[b, kv_idx] != 0) if valid is not None else keep

    return mask_mod


def register(name: str = "attnc") -> str:
    """Registers attnc's attention and mask functions with transformers under `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
    return name
