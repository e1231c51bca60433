"""Gen-1's guidance in the node layer, on ComfyUI's node API alone: VideoP2PSampler's temporal_guidance and structure input,
and the StructureGuidance node with a tiny diffusers ControlNet loaded by folder name (as from models/controlnet).

The tiny UNet of vp2p_world/tiny.py has latents of 16x16 for 64x64 frames: its ControlNet's conditioning embedding
(8, 16, 16) downsamples by 4, so the structure clip is 64x64 here.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from comfy_nodes import NODE_MAP, run as run_node
from nodes import controlnet as cn_mod, files as node_files
from nodes.nodes_sample import VideoP2PSampler
from nodes.nodes_structure import StructureGuidanceNode
from nodes.types import VP2P_STRUCTURE, VP2PStructure
from test_nodes import FRAMES, SRC, TGT, FakeClip, edit, invert, make_latent, make_model, same_state, unet_state
from vp2p_core import SamplerOptions, VP2PInputError, diffusers_controlnet, sample_edit, trained_weights
from vp2p_core import StructureGuidance as CoreStructure
from vp2p_world.tiny import tiny_unet

torch.set_num_threads(1)
CN = "tiny_depth"


def speaking_controlnet(unet=None, seed=0):
    """A tiny diffusers ControlNet whose zero convolutions are not zero, so it changes the result."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet if unet is not None else tiny_unet(),
                                   conditioning_embedding_out_channels=(8, 16, 16)).eval()
    with torch.no_grad():
        for n, p in cn.named_parameters():
            if "controlnet_down_blocks" in n or "controlnet_mid_block" in n or "conv_out" in n:
                p.normal_(0, 0.05)
    return cn


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("vp2p_gen1")
    node_files.set_roots(output=base / "output", models=base / "models")
    cn_dir = base / "models" / "controlnet"
    cn = speaking_controlnet()
    cn.save_pretrained(cn_dir / CN, safe_serialization=True)
    speaking_controlnet(tiny_unet(cross_dim=48), seed=1).save_pretrained(cn_dir / "sd2ish", safe_serialization=True)
    (cn_dir / "pickled").mkdir()
    (cn_dir / "pickled" / "config.json").write_text((cn_dir / CN / "config.json").read_text())
    cn_mod.set_controlnet_dirs([cn_dir])
    clip, model, latent = FakeClip(), make_model(), make_latent()
    inv = invert(model, latent, clip, steps=4, inner_steps=1, cache_dir="")
    e = edit(clip, SRC, TGT, blend_words="ball")
    g = torch.Generator().manual_seed(5)
    images = torch.rand(FRAMES, 64, 64, 3, generator=g)
    yield SimpleNamespace(clip=clip, model=model, latent=latent, inv=inv, edit=e, images=images, cn=cn, base=base)
    cn_mod.set_controlnet_dirs()
    node_files.set_roots()


def run(setup, **kw):
    edited, source, _ = run_node(VideoP2PSampler, vp2p_model=setup.model, inversion=setup.inv, edit=setup.edit, **kw)
    return edited["samples"], source["samples"]


def structure(setup, images=None, blur=0.0, strength=1.0, start=0.0, end=1.0, **kw):
    kw.setdefault("diffusers_controlnet", CN)
    return run_node(StructureGuidanceNode, structure=setup.images if images is None else images, structure_blur=blur,
                    strength=strength, start_percent=start, end_percent=end, **kw)


# ---------------------------------------------------------------------------------------------------------
# definitions

def test_structure_guidance_reruns_when_its_diffusers_controlnet_folder_changes(setup):
    """ComfyUI re-runs a node whose fingerprint_inputs changes: new weights under the same folder name count, a
    connected control_net is left to ComfyUI (a constant), a bad name to execute's error."""
    import os

    before = StructureGuidanceNode.fingerprint_inputs(diffusers_controlnet=CN)
    assert before and before == StructureGuidanceNode.fingerprint_inputs(diffusers_controlnet=f" {CN} ")
    weights = next((setup.base / "models" / "controlnet" / CN).glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert StructureGuidanceNode.fingerprint_inputs(diffusers_controlnet=CN) != before
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert StructureGuidanceNode.fingerprint_inputs(diffusers_controlnet="") == ""
    assert StructureGuidanceNode.fingerprint_inputs(diffusers_controlnet="missing").startswith("missing:")


def test_definitions():
    assert NODE_MAP["StructureGuidance"] is StructureGuidanceNode
    spec = VideoP2PSampler.INPUT_TYPES()
    kind, opts = spec["optional"]["temporal_guidance"]
    assert kind == "FLOAT" and opts["default"] == 1.0 and opts["min"] == 0.0 and opts["max"] == 4.0
    assert opts["step"] == 0.05 and "w_t" in opts["tooltip"] and "no extra cost" in opts["tooltip"]
    assert spec["optional"]["structure"][0] == VP2P_STRUCTURE
    assert list(spec["required"]) == ["vp2p_model", "inversion", "edit", "guidance", "decoupled_guidance"]

    sg = StructureGuidanceNode.INPUT_TYPES()
    assert list(sg["required"]) == ["structure", "structure_blur", "strength", "start_percent", "end_percent"]
    assert list(sg["optional"]) == ["control_net", "diffusers_controlnet"]
    assert sg["optional"]["control_net"][0] == "CONTROL_NET" and sg["optional"]["diffusers_controlnet"][0] == "STRING"
    assert sg["required"]["structure"][0] == "IMAGE"
    blur = sg["required"]["structure_blur"][1]
    assert blur["default"] == 0.0 and blur["min"] == 0.0 and "t_s" in blur["tooltip"] and "64-pixel" in blur["tooltip"]
    # as ComfyUI's Apply ControlNet
    assert sg["required"]["strength"][1] | {"tooltip": ""} == {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                                              "tooltip": ""}
    assert sg["required"]["start_percent"][1]["default"] == 0.0 and sg["required"]["end_percent"][1]["default"] == 1.0
    assert list(StructureGuidanceNode.RETURN_TYPES) == [VP2P_STRUCTURE, "IMAGE"]
    assert list(StructureGuidanceNode.RETURN_NAMES) == ["structure", "structure_preview"]


# ---------------------------------------------------------------------------------------------------------
# temporal guidance

def test_temporal_guidance_one_equals_the_default(setup):
    plain, plain_src = run(setup)
    one, one_src = run(setup, temporal_guidance=1.0)
    assert torch.equal(plain, one) and torch.equal(plain_src, one_src)
    smooth, smooth_src = run(setup, temporal_guidance=2.0)
    assert (smooth - plain).abs().max() > 1e-4
    assert torch.equal(smooth_src, plain_src)  # the source branch is untouched
    with pytest.raises(VP2PInputError, match="temporal_guidance"):
        run(setup, temporal_guidance=-0.5)


# ---------------------------------------------------------------------------------------------------------
# structure guidance

def test_structure_steers_the_edit_and_strength_zero_is_none(setup):
    plain, plain_src = run(setup)
    before = unet_state(setup.model)
    spec, preview = structure(setup)
    assert isinstance(spec, VP2PStructure) and spec.control.compression == 4
    assert preview.shape == setup.images.shape and torch.allclose(preview, setup.images)
    steered, steered_src = run(setup, structure=spec)
    assert (steered - plain).abs().max() > 1e-4
    assert torch.allclose(steered_src, plain_src, atol=1e-5)  # the source branch keeps reproducing the clip
    assert same_state(unet_state(setup.model), before)

    # the node path is the core's StructureGuidance with the same ControlNet
    core = CoreStructure.from_images(diffusers_controlnet(setup.cn), setup.images, (16, 16), FRAMES)
    vm = setup.model.video
    with torch.inference_mode(), trained_weights(vm, setup.model.delta):
        direct = sample_edit(vm, setup.inv, setup.edit.plan, options=SamplerOptions(), structure=core)
    assert torch.allclose(direct.edited.flatten(0, 1) / setup.model.latent_scale, steered, atol=1e-5)

    zero, _ = structure(setup, strength=0.0)
    assert torch.equal(run(setup, structure=zero)[0], plain)
    late, _ = structure(setup, start=1.0, end=1.0)
    assert torch.equal(run(setup, structure=late)[0], plain)

    both, _ = run(setup, structure=spec, temporal_guidance=1.5)
    assert (both - steered).abs().max() > 1e-4


def test_the_sampler_asks_room_for_the_controlnet_on_every_controlled_row(setup, monkeypatch):
    """The ControlNet runs on the targets' conditional and unconditional rows (and edit guidance's contrast rows):
    the memory the sampler asks ComfyUI for grows by half a UNet's on each of those clips (it counted the
    conditional ones alone)."""
    import nodes.nodes_sample as sample_mod
    from vp2p_core.memory import call_rows, working_memory

    asked = []
    make_host = sample_mod.make_host
    monkeypatch.setattr(sample_mod, "make_host", lambda *a, **k: (asked.append(k["memory_required"]),
                                                                   make_host(*a, **k))[1])
    spec, _ = structure(setup)
    rows = call_rows(FRAMES, None, frame_attention=setup.model.video.frame_attention, steps=setup.inv.num_steps)
    size, dtype = tuple(setup.inv.x_T.shape[-2:]), setup.model.video.weight_dtype
    for edit_guidance, controlled in ((0.0, 2), (2.0, 3)):
        asked.clear()
        run(setup, edit_guidance=edit_guidance)
        run(setup, structure=spec, edit_guidance=edit_guidance)
        assert asked[1] - asked[0] == working_memory("infer", controlled * rows, size, dtype) // 2, edit_guidance


def test_structure_blur(setup):
    sharp, _ = structure(setup, blur=0.0)
    soft, preview = structure(setup, blur=4.0)
    hf = lambda x: (x[:, :, 1:] - x[:, :, :-1]).abs().mean()  # noqa: E731
    assert hf(preview) < 0.5 * hf(setup.images)
    assert (run(setup, structure=soft)[0] - run(setup, structure=sharp)[0]).abs().max() > 1e-5
    one_channel, preview1 = structure(setup, images=setup.images[..., :1])
    assert preview1.shape[-1] == 3
    with pytest.raises(VP2PInputError, match="structure_blur"):
        structure(setup, blur=-1.0)


def test_structure_clip_must_fit_the_clip(setup):
    five, _ = structure(setup, images=torch.rand(5, 64, 64, 3))
    with pytest.raises(VP2PInputError, match=f"structure: 5 frames, but the clip has {FRAMES}"):
        run(setup, structure=five)
    # a depth preprocessor's own size, and one map for every frame, are fitted to the clip (they were refused)
    small, _ = structure(setup, images=torch.rand(1, 32, 32, 3))
    edited, _ = run(setup, structure=small)
    assert torch.isfinite(edited).all() and not torch.equal(edited, run(setup)[0])  # it steered
    with pytest.raises(VP2PInputError, match="structure: expected an IMAGE"):
        structure(setup, images=torch.rand(FRAMES, 64, 64))
    with pytest.raises(VP2PInputError, match="structure: expected the output of StructureGuidance"):
        run(setup, structure="depth")


def test_controlnet_inputs(setup):
    with pytest.raises(VP2PInputError, match="control_net: connect a ControlNet"):
        structure(setup, diffusers_controlnet="  ")
    with pytest.raises(VP2PInputError, match="use one"):
        structure(setup, control_net=object())
    for bad in ("../tiny_depth", "/abs/tiny_depth", "a/./b", "C:/x"):
        with pytest.raises(VP2PInputError, match="diffusers_controlnet"):
            structure(setup, diffusers_controlnet=bad)
    with pytest.raises(VP2PInputError, match="no diffusers ControlNet folder 'missing'"):
        structure(setup, diffusers_controlnet="missing")
    with pytest.raises(VP2PInputError, match="safetensors"):
        structure(setup, diffusers_controlnet="pickled")  # a config without safetensors weights is refused
    from diffusers import ControlNetModel  # a ControlNet for one-channel hints: the structure clip is RGB

    gray = ControlNetModel.from_unet(tiny_unet(), conditioning_embedding_out_channels=(8, 16, 16),
                                     conditioning_channels=1)
    gray.save_pretrained(setup.base / "models" / "controlnet" / "gray", safe_serialization=True)
    with pytest.raises(VP2PInputError, match="diffusers_controlnet: 'gray' takes conditioning images of 1 channels"):
        structure(setup, diffusers_controlnet="gray")
    with pytest.raises(VP2PInputError, match="start_percent"):
        structure(setup, start=0.8, end=0.2)
    # a ControlNet for another text width (SD1 vs SD2) is refused before sampling, naming structure
    other, _ = structure(setup, diffusers_controlnet="sd2ish/")
    with pytest.raises(VP2PInputError, match="structure: the ControlNet 'sd2ish/' reads text embeddings of width 48"):
        run(setup, structure=other)


def test_controlnet_residual_layout_is_checked(setup):
    handle = cn_mod.diffusers_handle(setup.cn, "x")
    unet = setup.model.video.unet
    assert cn_mod.unet_residual_channels(unet) == ([32, 32, 32, 64], 64)
    handle.check_fits(unet)
    wrong = cn_mod.diffusers_handle(setup.cn, "x")
    wrong.down_channels = wrong.down_channels[:-1]
    with pytest.raises(VP2PInputError, match="residuals of 3 down blocks"):
        wrong.check_fits(unet)


class FakeCldm(torch.nn.Module):
    """Stands in for comfy.cldm.cldm.ControlNet: same call signature, output dict and attributes read."""

    def __init__(self, cn):
        super().__init__()
        self.cn, self.dtype, self.calls = cn, torch.float32, []
        self.zero_convs = torch.nn.ModuleList(torch.nn.Sequential(b) for b in cn.controlnet_down_blocks)
        self.middle_block_out = torch.nn.Sequential(cn.controlnet_mid_block)
        self.input_blocks = torch.nn.ModuleList([torch.nn.Sequential(cn.conv_in)])

    def forward(self, x, hint, timesteps, context, y=None, **kw):
        self.calls.append((timesteps.dtype, tuple(timesteps.shape), y))
        down, mid = self.cn(x, timesteps, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        return {"output": list(down), "middle": [mid]}


def test_comfy_controlnet_adapter_maps_outputs(setup):
    """The CONTROL_NET adapter: keyword call, float timestep per row, output -> down, middle -> mid."""
    fake = FakeCldm(setup.cn)
    control_net = SimpleNamespace(control_model=fake, compression_ratio=4, manual_cast_dtype=None, extra_args={},
                                  preprocess_image=lambda a: a, global_average_pooling=False, control_model_wrapped=None)
    handle = cn_mod.cldm_handle(control_net)
    ref = cn_mod.diffusers_handle(setup.cn, "ref")
    assert (handle.down_channels, handle.mid_channels, handle.in_channels) == (ref.down_channels, ref.mid_channels, 4)
    g = torch.Generator().manual_seed(0)
    x, text, cond = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        down, mid = handle.residual_fn(x, 981, text, cond)
        down_ref, mid_ref = ref.residual_fn(x, 981, text, cond)
    assert fake.calls[-1] == (torch.float32, (2,), None)
    assert len(down) == len(down_ref) == 4
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(down, down_ref)) and torch.allclose(mid, mid_ref, atol=1e-6)
    control_net.global_average_pooling = True
    with torch.no_grad():
        pooled, _ = handle.residual_fn(x, 981, text, cond)
    assert torch.allclose(pooled[0], down_ref[0].mean(dim=(2, 3), keepdim=True).expand_as(pooled[0]), atol=1e-6)
