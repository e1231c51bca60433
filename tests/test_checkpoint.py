"""Single-file SD checkpoints: tiny diffusers/transformers models written in the original (LDM) key layout
load back through vp2p_core.checkpoint / Components.from_single_file and reproduce the originals."""
import pytest
import torch
from header_only import header_only
from safetensors.torch import save_file

from vp2p_core import VP2PInputError
from vp2p_core.checkpoint import load_single_file
from vp2p_core.inflation import video_forward
from vp2p_core.pipeline import Components
from vp2p_world.train import TOKENIZER

torch.set_num_threads(1)
VOCAB = 49408  # the real CLIP tokenizer's ids must fit


# ---------------------------------------------------------------- diffusers -> LDM key layout (test-only inverse)

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _sub(rest, pairs):
    for a, b in pairs:
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def unet_to_ldm(unet) -> dict:
    n = unet.config.layers_per_block + 1
    attn_up = {i: t.startswith("CrossAttn") for i, t in enumerate(unet.config.up_block_types)}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for k, v in unet.state_dict().items():
        p = k.split(".")
        head, last = ".".join(p[:-1]), p[-1]
        if head in fixed:
            nk = f"{fixed[head]}.{last}"
        elif p[0] == "down_blocks":
            b = int(p[1])
            if p[2] == "downsamplers":
                nk = f"input_blocks.{(b + 1) * n}.0.op.{last}"
            else:
                j, rest = int(p[3]), ".".join(p[4:])
                sub = 0 if p[2] == "resnets" else 1
                nk = f"input_blocks.{1 + b * n + j}.{sub}.{_sub(rest, RESNET) if sub == 0 else rest}"
        elif p[0] == "mid_block":
            j, rest = int(p[2]), ".".join(p[3:])
            nk = f"middle_block.{2 * j}.{_sub(rest, RESNET)}" if p[1] == "resnets" else f"middle_block.1.{rest}"
        elif p[0] == "up_blocks":
            b = int(p[1])
            if p[2] == "upsamplers":
                nk = f"output_blocks.{b * n + n - 1}.{2 if attn_up[b] else 1}.conv.{last}"
            else:
                j, rest = int(p[3]), ".".join(p[4:])
                sub = 0 if p[2] == "resnets" else 1
                nk = f"output_blocks.{b * n + j}.{sub}.{_sub(rest, RESNET) if sub == 0 else rest}"
        else:
            raise AssertionError(k)
        out["model.diffusion_model." + nk] = v
    return out


def vae_to_ldm(vae) -> dict:
    nb = len(vae.config.block_out_channels)
    attn = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
    out = {}
    for k, v in vae.state_dict().items():
        p = k.split(".")
        if p[1] == "down_blocks":
            i = p[2]
            if p[3] == "downsamplers":
                nk = f"{p[0]}.down.{i}.downsample.conv.{p[-1]}"
            else:
                nk = f"{p[0]}.down.{i}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
        elif p[1] == "up_blocks":
            i = nb - 1 - int(p[2])
            if p[3] == "upsamplers":
                nk = f"{p[0]}.up.{i}.upsample.conv.{p[-1]}"
            else:
                nk = f"{p[0]}.up.{i}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
        elif p[1] == "mid_block" and p[2] == "resnets":
            nk = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
        elif p[1] == "mid_block":
            nk = f"{p[0]}.mid.attn_1.{_sub('.'.join(p[4:]), attn)}"
            if v.dim() == 2:
                v = v[:, :, None, None]  # LDM's attention uses 1x1 convs
        else:
            nk = k.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + nk] = v
    return out


def clip_to_ldm(te) -> dict:
    return {"cond_stage_model.transformer.text_model." + k: v for k, v in te.state_dict().items()}


def open_clip_to_ldm(te, g) -> dict:
    """OpenCLIP layout, with one extra (random) last resblock that SD2 skips (penultimate layer)."""
    p, out, sd = "cond_stage_model.model.", {}, te.state_dict()
    n, d = te.config.num_hidden_layers, te.config.hidden_size
    out[p + "token_embedding.weight"] = sd["embeddings.token_embedding.weight"]
    out[p + "positional_embedding"] = sd["embeddings.position_embedding.weight"]
    out[p + "ln_final.weight"], out[p + "ln_final.bias"] = sd["final_layer_norm.weight"], sd["final_layer_norm.bias"]
    out[p + "text_projection"] = torch.randn(d, d, generator=g)
    out[p + "logit_scale"] = torch.tensor(4.6)
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for i in range(n + 1):
        dst = f"{p}transformer.resblocks.{i}."
        for s in ("weight", "bias"):
            for a, b in names.items():
                t = sd[f"encoder.layers.{min(i, n - 1)}.{a}.{s}"]
                out[f"{dst}{b}.{s}"] = t if i < n else torch.randn(t.shape, generator=g)
            qkv = torch.cat([sd[f"encoder.layers.{min(i, n - 1)}.self_attn.{q}_proj.{s}"] for q in "qkv"])
            out[f"{dst}attn.in_proj_{s}"] = qkv if i < n else torch.randn(qkv.shape, generator=g)
    return out


# ---------------------------------------------------------------- tiny models

def _randomize(model, g):
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(torch.randn(prm.shape, generator=g) * 0.05)  # non-trivial norms/biases/zero-inits
    return model.eval()


def tiny_models(sd2: bool, seed: int = 0):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if sd2:  # linear proj_in, head dim 64, two transformer blocks per level, attention on every level
        unet = UNet2DConditionModel(
            sample_size=16, block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=64,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=[1, 2],
            use_linear_projection=True, transformer_layers_per_block=2)
    else:  # conv proj_in, 8 heads, SD1's two res blocks per level, no attention on the last level
        unet = UNet2DConditionModel(
            sample_size=16, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=32, sample_size=32)
    d = unet.config.cross_attention_dim
    te = CLIPTextModel(CLIPTextConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                                      num_attention_heads=1, vocab_size=VOCAB, max_position_embeddings=77,
                                      hidden_act="gelu" if sd2 else "quick_gelu"))
    unet, vae, te = (_randomize(m, g) for m in (unet, vae, te))
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **(open_clip_to_ldm(te, g) if sd2 else clip_to_ldm(te))}
    return unet, vae, te, {k: v.detach().contiguous().clone() for k, v in sd.items()}


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def written(request, tmp_path_factory):
    unet, vae, te, sd = tiny_models(request.param == "sd2")
    path = tmp_path_factory.mktemp("ckpt") / f"tiny_{request.param}.safetensors"
    save_file(sd, str(path))
    return request.param, unet, vae, te, sd, path


def _close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-5


@torch.no_grad()
def test_single_file_reproduces_models(written):
    family, unet, vae, te, _, path = written
    m = load_single_file(path)
    assert m.family == family and m.prediction_type == "epsilon" and m.latent_scale == 0.18215
    g = torch.Generator().manual_seed(5)
    d = unet.config.cross_attention_dim
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, d, generator=g)
    _close(m.unet(x, 500, ctx).sample, unet(x, 500, ctx).sample)
    img = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    _close(m.vae.encode(img).latent_dist.mean, vae.encode(img).latent_dist.mean)
    _close(m.vae.decode(x[:1]).sample, vae.decode(x[:1]).sample)
    ids = torch.randint(0, VOCAB, (2, 77), generator=g)
    _close(m.text_encoder(ids)[0], te(ids)[0])


@torch.no_grad()
def test_components_from_single_file(written):
    family, unet, vae, te, _, path = written
    cm = Components.from_single_file(path, TOKENIZER, prediction_type="v_prediction")
    assert cm.model.schedule.prediction_type == "v_prediction"
    # SD 2.x's OpenCLIP pads with "!" (token 0), SD 1.x's CLIP with its end token
    assert cm.tokenizer.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
    ids = cm.tokenizer(["a rabbit is jumping on the grass"], padding="max_length", max_length=77,
                       return_tensors="pt").input_ids
    _close(cm.encode_prompts(["a rabbit is jumping on the grass"]), te(ids)[0])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    ctx = te(ids)[0]
    _close(video_forward(cm.model.unet, x, 300, ctx, num_frames=1), unet(x, 300, ctx).sample)
    assert Components.from_single_file(path, cm.tokenizer).tokenizer is cm.tokenizer  # a tokenizer object too


def test_prediction_type_from_v_pred_key(written, tmp_path):
    family, *_, sd, path = written
    if family == "sd2":
        p = tmp_path / "v.safetensors"
        save_file({**sd, "v_pred": torch.tensor([])}, str(p))
        assert load_single_file(p).prediction_type == "v_prediction"
    assert load_single_file(path, prediction_type="v_prediction").prediction_type == "v_prediction"
    with pytest.raises(VP2PInputError, match="prediction_type"):
        load_single_file(path, prediction_type="sample")


def test_refuses_pickles_and_non_sd_files(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(VP2PInputError, match=r"model\.ckpt.*pickle.*\.safetensors"):
        Components.from_single_file(ckpt, TOKENIZER)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"garbage that is not a safetensors header")
    with pytest.raises(VP2PInputError, match=r"fake\.safetensors.*not a readable safetensors"):
        load_single_file(fake)
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(VP2PInputError, match=r"lora\.safetensors.*not an original-layout Stable Diffusion.*UNet"):
        load_single_file(other)
    xl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(2)}, str(xl))
    with pytest.raises(VP2PInputError, match="SDXL"):
        load_single_file(xl)
    sgm = tmp_path / "sd2_sgm.safetensors"  # one OpenCLIP encoder under conditioner.*: SD 2.x, not SDXL
    save_file({"conditioner.embedders.0.model.ln_final.weight": torch.ones(2)}, str(sgm))
    with pytest.raises(VP2PInputError, match=r"sd2_sgm\.safetensors.*SD 2\.x checkpoint in the sgm layout"):
        load_single_file(sgm)
    with pytest.raises(VP2PInputError, match="does not exist"):
        load_single_file(tmp_path / "missing.safetensors")


def test_refuses_incomplete_checkpoint(written, tmp_path):
    *_, sd, _ = written
    p = tmp_path / "novae.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}, str(p))
    with pytest.raises(VP2PInputError, match="no VAE"):
        load_single_file(p)


def test_refuses_inpainting_and_class_conditioned_unets(written, tmp_path):
    """A UNet that takes the masked image beside the latent (9 input channels) or a class embedding would fail at
    its first call, or run without its conditioning: refused when the file is read."""
    *_, sd, _ = written
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint = tmp_path / "inpaint.safetensors"
    weight = sd[key]
    save_file({**sd, key: torch.cat([weight, weight[:, :4], weight[:, :1]], 1).contiguous()}, str(inpaint))
    with pytest.raises(VP2PInputError, match=r"inpaint\.safetensors.*9 input and 4 output channels"):
        load_single_file(inpaint)
    unclip = tmp_path / "unclip.safetensors"
    save_file({**sd, "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2)}, str(unclip))
    with pytest.raises(VP2PInputError, match=r"unclip\.safetensors.*class-conditioned"):
        load_single_file(unclip)


def test_a_folders_scheduler_is_read_and_an_unsupported_one_refused(tmp_path):
    import json

    from vp2p_core.pipeline import scheduler_config

    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({"prediction_type": "v_prediction", "beta_schedule": "linear", "steps_offset": 1}))
    config = scheduler_config(path)
    assert (config.prediction_type, config.beta_schedule, config.steps_offset) == ("v_prediction", "linear", 1)
    for bad, words in (({"rescale_betas_zero_snr": True}, "zero-terminal-SNR"),
                       ({"trained_betas": [0.1, 0.2]}, "trained-betas"),
                       ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
                       ({"prediction_type": "sample"}, "prediction_type"),
                       ({"beta_start": "0.00085"}, "wrong type"),
                       ([0.1], "expected a JSON object")):
        path.write_text(json.dumps(bad))
        with pytest.raises(VP2PInputError, match=f"scheduler_config.json.*{words}"):
            scheduler_config(path)
    path.write_text("{not json")
    with pytest.raises(VP2PInputError, match="scheduler_config.json.*JSON"):
        scheduler_config(path)


def test_refuses_a_checkpoint_marked_for_another_schedule_before_reading_its_tensors(written, tmp_path, monkeypatch):
    """ComfyUI's CheckpointSave marks a zero-terminal-SNR or EDM v-prediction model (``ztsnr``, ``edm_vpred.*``):
    run on SD's DDIM schedule it edits wrongly without a word, so it is refused by name, as the ComfyUI path and a
    folder's scheduler refuse it; and a file is refused before any of its tensors is read."""
    import safetensors

    *_, sd, _ = written
    for marker, message in (({"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, "zero terminal SNR"),
                            ({"edm_vpred.sigma_max": torch.tensor([120.0])}, "EDM v-prediction")):
        p = tmp_path / "marked.safetensors"
        save_file({**sd, **marker}, str(p))
        with pytest.raises(VP2PInputError, match=f"marked\\.safetensors.*marked for {message}"):
            load_single_file(p)
    xl = tmp_path / "sdxl.safetensors"  # an SDXL UNet's keys look like SD's: they were all read before the refusal
    save_file({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.ones(2)}, str(xl))
    monkeypatch.setattr(safetensors, "safe_open", header_only())
    with pytest.raises(VP2PInputError, match="SDXL"):
        load_single_file(xl)


def test_sd2_text_encoder_keeps_the_penultimate_layer_of_24_or_all_23_of_a_diffusers_conversion():
    """SD 2.x reads OpenCLIP ViT-H's penultimate layer: from a file with all 24 layers the 24th is dropped; a file
    converted back from diffusers holds the 23 it uses, and losing the last of those gave wrong embeddings without
    a word. (Tensors are stand-ins: the names and the width are what is read.)"""
    from vp2p_core.checkpoint import OPEN_CLIP_PREFIX, open_clip_to_hf

    def file_with(layers: int, width: int) -> dict:
        p = OPEN_CLIP_PREFIX
        sd = {p + "token_embedding.weight": torch.zeros(4, width), p + "positional_embedding": torch.zeros(77, 2),
              p + "ln_final.weight": torch.zeros(2), p + "ln_final.bias": torch.zeros(2)}
        for i in range(layers):
            for name in ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj", "attn.out_proj"):
                for s in ("weight", "bias"):
                    sd[f"{p}transformer.resblocks.{i}.{name}.{s}"] = torch.zeros(1)
            for s in ("weight", "bias"):
                sd[f"{p}transformer.resblocks.{i}.attn.in_proj_{s}"] = torch.zeros(3)
        return sd

    def layers(out: dict) -> int:
        return len({k.split(".")[2] for k in out if k.startswith("encoder.layers.")})

    assert layers(open_clip_to_hf(file_with(24, 1024))) == 23
    assert layers(open_clip_to_hf(file_with(23, 1024))) == 23
    assert layers(open_clip_to_hf(file_with(3, 8))) == 2  # a tiny encoder: one more than it uses


def test_half_precision_keeps_the_vae_out_of_fp16(written):
    """SD's VAE decoder overflows fp16 at image size (black or NaN frames; ComfyUI runs SD 1.x/2.x VAEs in bf16 or
    fp32): asked for fp16, the UNet and text encoder compute in it and the VAE in float32; bf16 holds for all."""
    *_, path = written
    half = load_single_file(path, dtype=torch.float16)
    assert next(half.unet.parameters()).dtype == torch.float16 == next(half.text_encoder.parameters()).dtype
    assert next(half.vae.parameters()).dtype == torch.float32
    assert next(load_single_file(path, dtype=torch.bfloat16).vae.parameters()).dtype == torch.bfloat16
