"""ComfyUI unet_config -> diffusers config, checked against the known SD 1.5 / 2.1 UNets (no weights needed).

The weight conversion itself needs ComfyUI's model objects; tests/integration/test_comfyui.py checks that the
converted UNet's output matches ComfyUI's own.
"""
from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from nodes.convert import LDM_PREFIX, UNetHolder, comfy_prediction_type, diffusers_unet_config, unet_from_ldm_state_dict
from nodes.host import make_host, same_device
from vp2p_core.memory import working_memory
from test_nodes import make_model
from vp2p_core import VP2PInputError

# as ComfyUI's model detection gives them (comfy.supported_models SD15 / SD21UnclipH left out)
SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
        "use_temporal_resblock": False}
SD21 = dict(SD15, context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64)
SDXL = dict(SD15, adm_in_channels=2816, context_dim=2048, transformer_depth=[0, 0, 2, 2, 10, 10],
            channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2])


def param_count(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return sum(p.numel() for p in unet.parameters())


def test_sd15_config():
    c = diffusers_unet_config(SD15)
    assert c["block_out_channels"] == [320, 640, 1280, 1280]
    assert c["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert c["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert c["attention_head_dim"] == 8 and c["cross_attention_dim"] == 768 and not c["use_linear_projection"]
    assert param_count(c) == 859_520_964  # the SD 1.5 UNet


def test_sd21_config():
    c = diffusers_unet_config(SD21)
    assert c["attention_head_dim"] == [5, 10, 20, 20] and c["use_linear_projection"]
    assert param_count(c) == 865_910_724  # the SD 2.1 UNet


def test_non_sd_models_refused():
    with pytest.raises(VP2PInputError, match="SD-XL"):
        diffusers_unet_config(SDXL)
    with pytest.raises(VP2PInputError, match="num_res_blocks"):
        diffusers_unet_config(dict(SD15, num_res_blocks=[2, 1, 2, 2]))
    with pytest.raises(VP2PInputError, match="video"):
        diffusers_unet_config(dict(SD15, use_temporal_attention=True))
    with pytest.raises(VP2PInputError, match="depth above 1"):
        diffusers_unet_config(dict(SD15, transformer_depth=[2, 2, 1, 1, 1, 1, 0, 0],
                                   transformer_depth_output=[2, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, 0]))


def test_state_dict_errors():
    c = diffusers_unet_config(dict(SD15, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                                   transformer_depth_output=[1, 1, 1, 1]))
    with pytest.raises(VP2PInputError, match="no UNet weights"):
        unet_from_ldm_state_dict({"first_stage_model.x": torch.zeros(1)}, c)
    with pytest.raises(VP2PInputError, match="do not fit"):
        unet_from_ldm_state_dict({LDM_PREFIX + "time_embed.0.weight": torch.zeros(1280, 320)}, c)


def test_prediction_type():
    class Kind:
        def __init__(self, name):
            self.name = name

    def fake(name):
        return type("M", (), {"model": type("B", (), {"model_type": Kind(name)})()})()

    assert comfy_prediction_type(fake("EPS")) == "epsilon"
    assert comfy_prediction_type(fake("V_PREDICTION")) == "v_prediction"
    with pytest.raises(VP2PInputError, match="FLOW"):
        comfy_prediction_type(fake("FLOW"))

    # a MODEL's model_sampling (ComfyUI's classes by name; ModelSamplingDiscrete replaces it) wins over model_type
    def sampling_class(*bases, name="ModelSamplingAdvanced"):
        made = {}
        for b in bases:  # ComfyUI's class names, each a subclass of the next
            made[b] = type(b, (made[list(made)[-1]],) if made else (), {})
        return type(name, (type("ModelSamplingDiscrete", (), {}), made[bases[-1]]), {})

    def with_sampling(cls, zsnr=False, model_type="EPS"):
        m = fake(model_type)
        sampling = cls()
        sampling.zsnr = zsnr
        m.get_model_object = lambda name: sampling if name == "model_sampling" else None
        return m

    assert comfy_prediction_type(with_sampling(sampling_class("EPS", "V_PREDICTION"))) == "v_prediction"
    assert comfy_prediction_type(with_sampling(sampling_class("EPS"), model_type="V_PREDICTION")) == "epsilon"
    with pytest.raises(VP2PInputError, match="zero terminal SNR"):
        comfy_prediction_type(with_sampling(sampling_class("EPS", "V_PREDICTION"), zsnr=True))
    for bases, kind in ((("EPS", "X0"), "X0"), (("EPS", "V_PREDICTION", "EDM"), "EDM"), (("EPS", "LCM"), "LCM")):
        with pytest.raises(VP2PInputError, match=f"prediction type {kind} is not supported"):
            comfy_prediction_type(with_sampling(sampling_class(*bases)))


def test_plain_host_and_holder():
    m = make_model()
    host = make_host(m)
    assert host.device == torch.device("cpu") and host.load is None
    holder = UNetHolder(m.video.unet)
    holder.device = torch.device("cpu")  # ModelPatcher sets this; diffusers' own .device is read-only
    assert same_device(torch.device("cuda", 0), torch.device("cuda")) and not same_device(
        torch.device("cpu"), torch.device("cuda"))


def test_working_memory_is_asked_of_comfyui_before_loading(monkeypatch):
    """A stage's working memory from the activations measured per frame (SD 1.5's 64x64 latents, float32), scaled
    by latent area and dtype, plus a tuning's gradients and AdamW moments; ComfyUI's load_models_gpu gets it, so it
    frees that room before loading the UNet (stand-in modules for ComfyUI's here; the real one in integration)."""
    mib = 2 ** 20
    assert working_memory("infer", 1, (64, 64), torch.float32) == 238 * mib
    assert working_memory("infer", 24, (64, 64), torch.float16) == 24 * 119 * mib
    assert working_memory("null_text", 8, (32, 32), torch.float32) == 8 * 2029 * mib // 4
    assert working_memory("train", 8, (64, 64), torch.bfloat16, trained_parameters=1000) == 8 * 547 * mib + 12000
    with pytest.raises(ValueError, match="stage: expected one of"):
        working_memory("decode", 1, (64, 64), torch.float32)
    calls = []
    mm = types.SimpleNamespace(load_models_gpu=lambda models, **kw: calls.append((len(models), kw)),
                               throw_exception_if_processing_interrupted=lambda: None)
    utils = types.SimpleNamespace(ProgressBar=lambda total: types.SimpleNamespace(update_absolute=lambda *a: None))
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, utils
    for name, module in (("comfy", comfy), ("comfy.model_management", mm), ("comfy.utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    m = dataclasses.replace(make_model(), patcher=types.SimpleNamespace(load_device="cpu"))
    make_host(m, previews=False, memory_required=12345).load_module(m.video.unet)
    assert calls == [(1, {"memory_required": 12345, "force_full_load": True})]
    # null_text_checkpointing auto reads ComfyUI's free memory: the card's on a GPU, the machine's available memory on
    # a CPU (ComfyUI's --cpu; it read none there, and null-text at SD 1.5 size could exhaust a 16 GB machine)
    mm.get_free_memory = lambda device: (5 if str(device).startswith("cuda") else 12) * 2 ** 30
    gpu = dataclasses.replace(m, patcher=types.SimpleNamespace(load_device="cuda:0"))
    assert make_host(gpu, previews=False).available_memory() == 5 * 2 ** 30
    assert make_host(m, previews=False).available_memory() == 12 * 2 ** 30


def test_a_stage_beyond_the_whole_card_is_said_before_it_starts(caplog):
    """A long clip without Context Windows asks more than the card holds: ComfyUI frees everything, loads anyway and
    the stage runs out of memory minutes in. It is said before loading, naming Context Windows; nothing is said
    where it fits, or on the CPU."""
    from nodes.host import warn_beyond_the_card

    mm = types.SimpleNamespace(get_total_memory=lambda device: 8 * 2 ** 30)
    module = torch.nn.Linear(4, 4)
    with caplog.at_level("WARNING", logger="nodes.host"):
        warn_beyond_the_card(mm, "cuda:0", 7 * 2 ** 30, [module])
        warn_beyond_the_card(mm, "cpu", 60 * 2 ** 30, [module])
        assert not caplog.records
        warn_beyond_the_card(mm, "cuda:0", 60 * 2 ** 30, [module])
    assert "needs about 60.0 GiB" in caplog.text and "the card has 8.0" in caplog.text
    assert "Context Windows" in caplog.text


def test_ldm_state_dict_round_trip():
    """A tiny diffusers UNet written in the LDM layout (as ComfyUI holds it) converts back to the same outputs."""
    helper = pytest.importorskip("test_checkpoint")
    if not hasattr(helper, "unet_to_ldm"):
        pytest.skip("tests/test_checkpoint.py no longer provides unet_to_ldm")
    from vp2p_world.tiny import tiny_unet

    ref = tiny_unet(seed=4)
    comfy_cfg = dict(SD15, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                     transformer_depth_output=[1, 1, 1, 1], context_dim=32, num_heads=2)
    cfg = diffusers_unet_config(comfy_cfg)
    cfg["norm_num_groups"] = 8  # the tiny UNet's (SD's 32 is what ComfyUI checkpoints use)
    sd = helper.unet_to_ldm(ref)
    with torch.inference_mode():  # ComfyUI hands over inference tensors
        sd = {k: v.clone() for k, v in sd.items()}
        unet = unet_from_ldm_state_dict(sd, cfg)
    assert not any(p.is_inference() or p.requires_grad for p in unet.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(unet.parameters(), sd.values()))
    x, c = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    with torch.no_grad():
        a = ref(x, torch.tensor([10, 700]), encoder_hidden_states=c).sample
        b = unet(x, torch.tensor([10, 700]), encoder_hidden_states=c).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_patches_that_are_not_weights_are_named_as_ignored():
    """FreeU, IPAdapter, PAG and CFG functions patch the MODEL's forward or its guidance, which the conversion does
    not carry: the user is told which, instead of seeing them silently have no effect."""
    from types import SimpleNamespace

    from nodes.convert import ignored_model_patches

    plain = SimpleNamespace(model_options={"transformer_options": {}}, object_patches={"model_sampling": object()})
    assert ignored_model_patches(plain) == []
    patched = SimpleNamespace(
        model_options={"transformer_options": {"patches": {"output_block_patch": [object()]}, "patches_replace": {}},
                       "sampler_post_cfg_function": [object()], "sampler_cfg_function": None},
        object_patches={"model_sampling": object(), "diffusion_model.forward": object()})
    assert ignored_model_patches(patched) == ["sampler_post_cfg_function", "transformer_options.patches",
                                              "object_patches.diffusion_model.forward"]
    windows = SimpleNamespace(model_options={"transformer_options": {}, "context_handler": object()},
                              object_patches={}, wrappers={})  # ComfyUI's own Context Windows node on the MODEL
    assert ignored_model_patches(windows) == ["context_handler"]


def _lora_model(strength: float = 1.0):
    """A MODEL as ComfyUI holds one with a LoRA-style patch on one weight, nothing patched in place yet."""
    from collections import namedtuple

    dm = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    with torch.no_grad():
        for i, p in enumerate(dm.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1))
    up, down = torch.full((8, 2), 0.1), torch.linspace(-1, 1, 16).reshape(2, 8)
    model = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=dm), backup={},
                                  patches={"diffusion_model.0.weight": [(strength, (up, down), 1.0, None, None)]})
    return model, up @ down * strength, namedtuple("Dimension", ["weight", "inplace_update"])


def test_a_lora_models_fingerprint_is_made_of_its_weights_and_patches_not_the_patched_values():
    """With weight patches the base fingerprint is taken from the weights before them and the patches: a GPU and a
    CPU round the patched values their own ways, and a delta or inversion made with a LoRA on one machine must fit
    the same checkpoint and LoRA on another (it was refused: the fingerprint hashed the patched values)."""
    from nodes.convert import comfy_weight_fingerprints
    from vp2p_core.model import base_fingerprint

    model, delta, backup_entry = _lora_model()
    here = comfy_weight_fingerprints(model, "fp32")
    assert here is not None and len(here[1]) == 3  # float32: the half-precision aliases as for any model
    assert comfy_weight_fingerprints(model, "fp16")[1] == ()
    # another machine applied the patch in place, its float32 arithmetic a few ulps off this one's
    w = model.model.diffusion_model[0].weight
    original = w.detach().clone()
    with torch.no_grad():
        w.add_(delta * (1 + 3e-7))
    model.model.diffusion_model[0].comfy_patched_weights = True
    model.backup["diffusion_model.0.weight"] = backup_entry(original, False)
    assert comfy_weight_fingerprints(model, "fp32") == here
    # ... but not the weights as patched (what the fingerprint was before), nor another strength, nor no LoRA
    assert here[0] != base_fingerprint(model.model.diffusion_model)
    assert comfy_weight_fingerprints(_lora_model(strength=0.5)[0], "fp32")[0] != here[0]
    plain, _, _ = _lora_model()
    plain.patches = {}
    assert comfy_weight_fingerprints(plain, "fp32") is None  # the weights' own fingerprint names it
    # patched in place without its original: the patched weights name it, as before (with a warning)
    del model.backup["diffusion_model.0.weight"]
    assert comfy_weight_fingerprints(model, "fp32") is None


def test_inflate_takes_the_fingerprints_it_is_given():
    from vp2p_core.model import VideoModel, base_fingerprint
    from vp2p_world.tiny import tiny_unet

    unet = tiny_unet()
    own = base_fingerprint(unet)
    vm = VideoModel.from_unet(tiny_unet(), fingerprints=("0123456789abcdef", ("fedcba9876543210",)))
    assert vm.base_fingerprint == "0123456789abcdef" != own and vm.base_aliases == ("fedcba9876543210",)
    assert VideoModel.from_unet(unet).base_fingerprint == own
