"""Ports every mask_mod / score_mod of an attention-gym checkout (pytorch-labs/attention-gym,
attn_gym/masks and attn_gym/mods) with attnc.flex.port and compares each with the float64
dense reference (conftest.py's; FlexAttention's eager result for functions written for its
vmap only). Usage: .venv/bin/python python/examples/port_attention_gym.py PATH_TO_ATTENTION_GYM
Prints one line per function (max |error|, lets in the ported source) and "N of M"."""
import sys, warnings, traceback, types
warnings.filterwarnings("ignore")
import os
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "attention-gym")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
# attn_gym/__init__ imports plotting utils; stub what it needs if missing
try:
    import attn_gym
except Exception as e:
    print("attn_gym import:", e)
    m = types.ModuleType("attn_gym.utils"); m.visualize_attention_scores = None; m.cdiv = lambda a, b: (a + b - 1) // b
    sys.modules["attn_gym.utils"] = m
    import attn_gym
import torch
import attnc, attnc.flex as af
from conftest import dense_reference
from attn_gym.masks import (causal_mask, generate_sliding_window, generate_prefix_lm_mask, generate_doc_mask_mod,
    generate_dilated_sliding_window, generate_natten, generate_tiled_natten, generate_morton_natten,
    generate_sta_mask_mod_2d, generate_sta_mask_mod_3d)
from attn_gym.masks.document_mask import length_to_offsets
from attn_gym.mods import generate_alibi_bias, generate_tanh_softcap
import attn_gym.masks.flamingo as fl
import attn_gym.masks.svg as svg
torch.manual_seed(0)
L = 64
cases = {
 "causal": (None, causal_mask),
 "sliding": (None, generate_sliding_window(8)),
 "prefix_lm": (None, generate_prefix_lm_mask(10)),
 "doc_causal": (None, generate_doc_mask_mod(causal_mask, length_to_offsets([10, 30, 24], "cpu"))),
 "doc_sliding": (None, generate_doc_mask_mod(generate_sliding_window(5), length_to_offsets([20, 44], "cpu"))),
 "dilated": (None, generate_dilated_sliding_window(16, 2)),
 "natten": (None, generate_natten(8, 8, 3, 3)),
 "tiled_natten": (None, generate_tiled_natten(8, 8, 3, 3, 4, 4)),
 "morton_natten": (None, generate_morton_natten(8, 8, 3, 3)),
 "sta2d": (None, generate_sta_mask_mod_2d(canvas_hw=(8, 8), kernel_hw=(4, 4), tile_hw=(2, 2), text_seq_len=0)),
 "alibi": (generate_alibi_bias(4), None),
 "softcap": (generate_tanh_softcap(5.0, approx=False), causal_mask),
 "softcap_approx": (generate_tanh_softcap(5.0, approx=True), None),
}
cases["svg_spatial"] = (None, svg.generate_spatial_head_mask_mod(prompt_length=8, num_frames=4, token_per_frame=13, width=2, attn_sink=True, round_width=4))
cases["svg_temporal"] = (None, svg.generate_temporal_head_mask_mod(prompt_length=8, num_frames=4, token_per_frame=13, width=2))
cases["flamingo"] = (None, fl.generate_vision_cross_attention_mask_mod(torch.tensor([[0, 10], [10, 40]]), 32))
for name in ():
    f = getattr(svg, name, None)
    if f is not None:
        try:
            cases["svg_" + name.split("_")[1]] = (None, f(context_length=4, prompt_length=8, num_frames=4, token_per_frame=13, mul=2))
        except TypeError as e:
            print("svg", name, e)
ok = 0
for name, (sm, mm) in cases.items():
    try:
        p = af.port(sm, mm)
        q = torch.randn(1, 4, L, 16); k = torch.randn(1, 4, L, 16); v = torch.randn(1, 4, L, 16)
        o = p(q, k, v)
        try:
            want, _ = dense_reference(q, k, v, mask=mm, score=sm)
        except IndexError:  # written for FlexAttention's vmap only: its eager result
            from torch.nn.attention.flex_attention import flex_attention, create_block_mask
            want = flex_attention(q, k, v, score_mod=sm, block_mask=create_block_mask(mm, 1, 4, L, L, device="cpu")).double()
            print("  (against FlexAttention eager)")
        err = (o.double() - want).abs().max().item()
        print(f"{name:16s} err {err:.1e} lets {p.source.count('let ')}")
        ok += err < 1e-4
    except Exception as e:
        print(f"{name:16s} FAILED {type(e).__name__}: {str(e)[:300]}")
print(ok, "of", len(cases))
