"""Inflation: equivalences with the 2D model, frame-attention dependencies, GroupNorm per frame or clip, bad UNets."""
import copy

import pytest
import torch
import torch.nn.functional as F

from vp2p_core import VP2PInputError, VideoModel, inflate_unet, trainable_parameter_names, video_forward
from vp2p_core.attention import FrameAttnProcessor, FrameState
from vp2p_core.inflation import InflatedGroupNorm, is_inflated, set_frame_attention
from vp2p_core.inversion import Inversion
from vp2p_world.tiny import tiny_unet

torch.set_num_threads(1)


@pytest.mark.parametrize("sd2", [False, True])
@pytest.mark.parametrize("mode", ["first", "first_prev"])
def test_one_frame_equals_2d_model(sd2, mode):
    unet2d = tiny_unet(sd2=sd2)
    unet = inflate_unet(copy.deepcopy(unet2d), mode)
    # give the temporal modules non-zero weights: with one frame they attend to the frame itself,
    # so only the zero output projection keeps them silent; keep it zero here
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    txt = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ref = unet2d(x, 500, encoder_hidden_states=txt).sample
        out = video_forward(unet, x, 500, txt, num_frames=1)
    assert torch.allclose(ref, out, atol=1e-5, rtol=1e-5), (ref - out).abs().max()


def _perturb_temporal(unet, out_proj: bool):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "attn_temp" in n and (out_proj or "to_out" not in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_zero_initialised_temporal_attention_is_silent():
    unet = inflate_unet(tiny_unet())
    x = torch.randn(6, 4, 16, 16)  # 2 clips x 3 frames
    txt = torch.randn(2, 77, 32)
    with torch.no_grad():
        before = video_forward(unet, x, 100, txt, 3)
        _perturb_temporal(unet, out_proj=False)  # q/k/v and norm change, output projection stays zero
        after_qkv = video_forward(unet, x, 100, txt, 3)
        _perturb_temporal(unet, out_proj=True)
        after_out = video_forward(unet, x, 100, txt, 3)
    assert torch.equal(before, after_qkv)
    assert (before - after_out).abs().max() > 1e-3  # the module is really on the path


def test_temporal_attention_in_row_chunks_is_the_same(monkeypatch):
    """The frame axis' attention runs at most MAX_SDPA_ROWS (clip, pixel) rows per call (the CUDA grid's limit);
    the rows are independent, so chunks as small as 7 rows give the whole call's output."""
    import vp2p_core.attention as attention

    unet = inflate_unet(tiny_unet())
    _perturb_temporal(unet, out_proj=True)
    x, txt = torch.randn(6, 4, 16, 16), torch.randn(2, 77, 32)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: calls.append(q.shape[0]) or real(q, k, v, **kw))
    with torch.no_grad():
        whole = video_forward(unet, x, 100, txt, 3)
        assert max(calls) == 2 * 16 * 16  # the frame attention's rows: 2 clips x 16 x 16 pixels
        calls.clear()
        monkeypatch.setattr(attention, "MAX_SDPA_ROWS", 7)
        chunked = video_forward(unet, x, 100, txt, 3)
    assert max(calls) == 7
    assert torch.allclose(whole, chunked, atol=1e-6)


def _frame_attention(mode: str, frames: int):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    state = FrameState(num_frames=frames)
    attn.set_processor(FrameAttnProcessor(state, mode))
    return attn


@pytest.mark.parametrize("mode,deps", [("first", lambda i: {0, i}), ("first_prev", lambda i: {0, max(i - 1, 0), i})])
def test_frame_attention_dependencies(mode, deps):
    frames, tokens = 5, 6
    attn = _frame_attention(mode, frames)
    x = torch.randn(frames, tokens, 16)
    with torch.no_grad():
        base = attn(x)
        for j in range(frames):
            y = x.clone()
            y[j] += torch.randn(tokens, 16)
            changed = (attn(y) - base).abs().amax(dim=(1, 2)) > 1e-6
            for i in range(frames):
                assert bool(changed[i]) == (j in deps(i)), (mode, i, j)


def test_first_mode_matches_reference_formula():
    """Frame i: softmax(q_i k_0^T) v_0 with K/V projected from frame 0, per head."""
    frames, tokens = 3, 4
    attn = _frame_attention("first", frames)
    x = torch.randn(frames, tokens, 16)
    with torch.no_grad():
        out = attn(x)
        q = attn.to_q(x).view(frames, tokens, 2, 8).transpose(1, 2)
        k = attn.to_k(x[:1]).view(1, tokens, 2, 8).transpose(1, 2)
        v = attn.to_v(x[:1]).view(1, tokens, 2, 8).transpose(1, 2)
        p = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
        ref = attn.to_out[0]((p @ v).transpose(1, 2).reshape(frames, tokens, 16))
    assert torch.allclose(out, ref, atol=1e-6)


def test_groupnorm_pools_frames_in_resnets_only_with_clip():
    unet = inflate_unet(tiny_unet(), group_norm="clip")
    pooled = [n for n, m in unet.named_modules() if isinstance(m, InflatedGroupNorm)]
    assert "conv_norm_out" in pooled and all(".resnets." in n or n == "conv_norm_out" for n in pooled)
    assert not any(".attentions." in n for n in pooled)  # the transformer's GroupNorm stays per frame
    norm = unet.get_submodule(pooled[0])
    norm.frame_state.num_frames = 3
    x = torch.randn(6, norm.num_channels, 5, 5)
    ref = F.group_norm(x.view(2, 3, -1, 5, 5).transpose(1, 2), norm.num_groups, norm.weight, norm.bias, norm.eps)
    assert torch.allclose(norm(x), ref.transpose(1, 2).reshape(x.shape), atol=1e-6)
    # per frame (the default): each frame's own statistics, as the image model's GroupNorm
    inflate_unet(unet, group_norm="frame")
    per_frame = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    assert torch.allclose(norm(x), per_frame, atol=1e-6)
    assert (per_frame - ref.transpose(1, 2).reshape(x.shape)).abs().max() > 1e-3


def test_group_norm_frame_makes_each_frame_its_own_statistics():
    """With per-frame GroupNorm and frame-0 attention, frame 0's output does not depend on the other frames'
    content (causal); pooled statistics make it depend on every frame."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 16, 16, generator=g)
    y = x.clone()
    y[1:] = 3.0 * torch.randn(2, 4, 16, 16, generator=g)  # other frames, other content and scale
    txt = torch.randn(1, 77, 32, generator=g)
    out = {}
    for mode in ("frame", "clip"):
        unet = inflate_unet(tiny_unet(), group_norm=mode)
        with torch.no_grad():
            out[mode] = (video_forward(unet, x, 10, txt, 3)[0], video_forward(unet, y, 10, txt, 3)[0])
    assert torch.allclose(*out["frame"], atol=1e-5)
    assert (out["clip"][0] - out["clip"][1]).abs().max() > 1e-3


def test_group_norm_and_frame_attention_must_be_known():
    """Refused by name before the UNet changes (a bad frame attention was a plain ValueError, half-way through
    inflating)."""
    unet = tiny_unet()
    with pytest.raises(VP2PInputError, match="group_norm"):
        inflate_unet(unet, group_norm="batch")
    with pytest.raises(VP2PInputError, match="^frame_attention: "):
        inflate_unet(unet, frame_attention="previous")
    assert not is_inflated(unet)


def test_any_clip_length_and_independent_frames():
    unet2d = tiny_unet()
    unet = inflate_unet(copy.deepcopy(unet2d))
    x = torch.randn(5, 4, 16, 16)
    txt = torch.randn(1, 77, 32)
    with torch.no_grad():
        out5 = video_forward(unet, x, 10, txt, 5)
        out1 = video_forward(unet, x[:1], 10, txt, 1)
        indep = video_forward(unet, x, 10, txt, 5, independent=True)
        ref = unet2d(x, 10, encoder_hidden_states=txt.expand(5, -1, -1)).sample
    assert out5.shape == x.shape and out1.shape == (1, 4, 16, 16)
    assert torch.allclose(indep, ref, atol=1e-5)  # frames as separate images = the 2D model
    assert (out5 - ref).abs().max() > 1e-4


def test_trainable_set_is_the_references():
    unet = inflate_unet(tiny_unet())
    names = trainable_parameter_names(unet)
    assert names and all(("attn1.to_q" in n) or ("attn2.to_q" in n) or (".attn_temp." in n) for n in names)
    assert not any("norm_temp" in n or "to_k" in n and "attn_temp" not in n for n in names)
    blocks = sum(1 for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock")
    # per block: attn1.to_q.weight, attn2.to_q.weight, attn_temp: to_q/k/v weights + to_out weight and bias
    assert len(names) == blocks * 7


def test_temporal_module_names_match_reference():
    unet = inflate_unet(tiny_unet())
    keys = [k for k in unet.state_dict() if "temp" in k]
    assert any(k.endswith("transformer_blocks.0.attn_temp.to_q.weight") for k in keys)
    assert any(k.endswith("transformer_blocks.0.norm_temp.weight") for k in keys)
    inflate_unet(unet)  # idempotent
    assert len([k for k in unet.state_dict() if "temp" in k]) == len(keys)


def test_inflation_is_deterministic():
    a = inflate_unet(tiny_unet())
    torch.manual_seed(123)  # global RNG state must not matter
    b = inflate_unet(tiny_unet())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_non_sd_unet_is_refused():
    from diffusers import UNet2DModel

    with pytest.raises(VP2PInputError, match="UNet2DConditionModel"):
        inflate_unet(UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")))
    with pytest.raises(VP2PInputError, match="unet"):
        inflate_unet(torch.nn.Linear(2, 2))


def test_video_forward_checks_frames():
    model = VideoModel.from_unet(tiny_unet())
    with pytest.raises(VP2PInputError, match="whole number of clips"):
        video_forward(model.unet, torch.randn(5, 4, 16, 16), 1, torch.randn(1, 77, 32), 2)


def test_an_inversion_made_with_pooled_statistics_does_not_fit_a_per_frame_model():
    """group_norm changes every prediction, so per-frame statistics enter the fingerprint an inversion records;
    pooled ones leave it as it was before the option (files saved then were made with pooled statistics)."""
    frame = VideoModel.from_unet(tiny_unet(), group_norm="frame")
    clip = VideoModel.from_unet(tiny_unet(), group_norm="clip")
    assert clip.fingerprint == clip.base_fingerprint == frame.base_fingerprint != frame.fingerprint
    assert frame.fingerprint_with("d") != clip.fingerprint_with("d")


def test_an_inversion_made_with_another_frame_attention_does_not_fit():
    """frame_attention changes every prediction, so a mode other than 'first' (the only one before it entered)
    enters the fingerprint; the sampler then refuses an inversion made under the other mode, by name."""
    first = VideoModel.from_unet(tiny_unet(), group_norm="clip")
    prev = VideoModel.from_unet(tiny_unet(), group_norm="clip", frame_attention="first_prev")
    assert first.fingerprint == first.base_fingerprint == prev.base_fingerprint != prev.fingerprint
    assert prev.frame_attention == "first_prev"
    set_frame_attention(prev.unet, "first")  # the live mode, not the one it was inflated with
    assert prev.fingerprint == first.fingerprint
    inv = Inversion(x_T=torch.zeros(1, 4, 2, 2), source_embedding=torch.zeros(1, 77, 32), timesteps=torch.ones(1),
                    mode="fast", guidance=1.0, prompt="p", model_fingerprint=first.fingerprint, schedule=first.schedule)
    set_frame_attention(prev.unet, "first_prev")
    with pytest.raises(VP2PInputError, match="made with the model"):
        inv.check_model(prev.fingerprints)
