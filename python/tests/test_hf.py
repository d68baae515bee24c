"""A real client: a small randomly initialised 2-layer Llama (transformers) with attnc as
its attention implementation matches the same model on SDPA (logits, with and without
padding, GQA), and generation with a KV cache agrees; Mistral's sliding window and
Gemma 2's sliding window with logit soft-capping (mask patterns and a score ported by
attnc.flex) match transformers' eager attention, with padding and in generation."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnc.hf  # noqa: E402


def tiny_llama(impl):
    return _tiny(transformers.LlamaConfig, transformers.LlamaForCausalLM, impl)


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


def _tiny(config_cls, model_cls, impl, **extra):
    cfg = config_cls(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **extra,
    )
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return model_cls(cfg).eval()


@pytest.mark.parametrize(
    "family",
    [
        # a sliding window shorter than the sequence (transformers' sliding mask function,
        # ported by attnc.flex)
        ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
        # Gemma 2: alternating sliding / full layers and logit soft-capping (the ported
        # score), head dim 16
        ("Gemma2Config", "Gemma2ForCausalLM", {"sliding_window": 6, "head_dim": 16, "attn_logit_softcapping": 30.0,
                                               "query_pre_attn_scalar": 16}),
    ],
    ids=["mistral_sliding", "gemma2_sliding_softcap"],
)
def test_other_mask_patterns_and_softcap_match_eager(models, family):
    cfg_name, model_name, extra = family
    config_cls, model_cls = getattr(transformers, cfg_name, None), getattr(transformers, model_name, None)
    if config_cls is None or model_cls is None:
        pytest.skip(f"this transformers has no {model_name}")
    eager = _tiny(config_cls, model_cls, "eager", **extra)
    ours = _tiny(config_cls, model_cls, "attnc_counted", **extra)
    ours.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 128, (2, 29), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 29, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        for attention_mask in (None, mask):
            ref = eager(ids, attention_mask=attention_mask).logits
            before = CALLS["n"]
            out = ours(ids, attention_mask=attention_mask).logits
            assert CALLS["n"] - before == 2
            keep = (attention_mask if attention_mask is not None else torch.ones_like(ids)).bool()
            assert torch.allclose(out[keep], ref[keep], atol=1e-4, rtol=1e-4), (out[keep] - ref[keep]).abs().max()
        # generation with a cache past the window
        short = ids[:1, :11]
        assert torch.equal(ours.generate(short, max_new_tokens=8, do_sample=False),
                           eager.generate(short, max_new_tokens=8, do_sample=False))
