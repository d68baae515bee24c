"""A real client: a small randomly initialised 2-layer Llama (transformers) with attnc as
its attention implementation matches the same model on SDPA (logits, with and without
padding, GQA), and generation with a KV cache agrees."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnc.hf  # noqa: E402


def tiny_llama(impl):
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


CALLS = {"n": 0}


def counted(*args, **kwargs):
    CALLS["n"] += 1
    return attnc.hf.attention_forward(*args, **kwargs)


@pytest.fixture(scope="module")
def models():
    attnc.hf.register()
    # the same functions under a second name, counting calls: the model really runs attnc
    transformers.AttentionInterface.register("attnc_counted", counted)
    transformers.masking_utils.AttentionMaskInterface.register("attnc_counted", attnc.hf.mask_function)
    sdpa = tiny_llama("sdpa")
    ours = tiny_llama("attnc_counted")
    ours.load_state_dict(sdpa.state_dict())
    return sdpa, ours


def test_registered_name():
    assert attnc.hf.register() == "attnc"
    assert transformers.AttentionInterface._global_mapping["attnc"] is attnc.hf.attention_forward


def test_logits_match_sdpa(models):
    sdpa, ours = models
    ids = torch.randint(0, 128, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sdpa(ids).logits
        before = CALLS["n"]
        out = ours(ids).logits
    assert CALLS["n"] - before == 2  # one call per layer
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()


def test_padding_matches_sdpa(models):
    sdpa, ours = models
    ids = torch.randint(0, 128, (3, 29), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 29, dtype=torch.long)
    mask[1, :7] = 0  # left padding
    mask[2, 20:] = 0  # right padding
    with torch.no_grad():
        ref = sdpa(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    keep = mask.bool()
    # rows of padding queries are not compared (SDPA and attnc treat them differently)
    assert torch.allclose(out[keep], ref[keep], atol=1e-4, rtol=1e-4), (out[keep] - ref[keep]).abs().max()


def test_generate_with_cache_matches_sdpa(models):
    sdpa, ours = models
    ids = torch.randint(0, 128, (1, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = sdpa.generate(ids, max_new_tokens=8, do_sample=False)
        out = ours.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, ref)
