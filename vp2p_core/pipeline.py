"""End-to-end Video-P2P on plain diffusers components (the CLI, the demo and the benchmark use it).

ComfyUI does not: its nodes bring their own CLIP and VAE and call the stage functions directly.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from .composite import composite_frames
from .context import ContextWindows
from .control import EditPlan, build_edit_plan
from .errors import VP2PInputError
from .host import Host, same_device
from .inversion import Inversion, invert
from .light import check_frames, take_light_out, with_light
from .model import VideoModel, check_text_to_image_unet
from .options import (SD_LATENT_SCALE, CompositeOptions, DecodeOptions, EditOptions, InflationOptions,
                      InversionOptions, LightOptions, SamplerOptions, TuneOptions)
from .sampling import EditResult, sample_edit
from .schedule import DDIMConfig
from .tuning import Delta, one_shot_tune, trained_weights

log = logging.getLogger(__name__)


@dataclass
class FolderModels:
    """The parts of a diffusers-format SD folder as stored: the UNet is the plain image UNet (not inflated)."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    schedule: DDIMConfig
    latent_scale: float


def vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype for models computing in ``dtype``: float32 for fp16, whose range SD's VAE decoder overflows
    at image size (black or NaN frames; ComfyUI runs SD 1.x/2.x VAEs in bf16 or fp32 only), else ``dtype``."""
    return torch.float32 if dtype == torch.float16 else dtype


def load_folder(folder: str | Path, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> FolderModels:
    """Load a diffusers-format SD folder offline (unet/, vae/, text_encoder/, tokenizer/, scheduler/), computing in
    ``dtype`` whatever dtype the weights were stored in."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer") if not (folder / s).is_dir()]
    if missing:
        raise VP2PInputError(f"model: {str(folder)!r} is not a diffusers SD folder (missing {', '.join(missing)})")
    device = torch.device(device)
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77, local_files_only=True)
    kw = dict(local_files_only=True, torch_dtype=dtype)
    te = CLIPTextModel.from_pretrained(folder / "text_encoder", **kw).to(device).eval()
    # diffusers loads without first initialising every weight only with accelerate installed (it is optional
    # here); without it, saying so spares a warning per model
    kw["low_cpu_mem_usage"] = importlib.util.find_spec("accelerate") is not None
    # channels_last: at image size the VAE's convolutions then take a kernel that needs no unfolded copy of their
    # input on CPU (the tiny 512-px model, one frame: decode peak +88 instead of +117 MiB, 0.139 instead of 0.167 s;
    # the same output within 6e-4), and tensor-core kernels in fp16 on a GPU
    vae = AutoencoderKL.from_pretrained(folder / "vae", **{**kw, "torch_dtype": vae_dtype(dtype)})
    vae = vae.to(device, memory_format=torch.channels_last).eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **kw).to(device).eval()
    check_text_to_image_unet(unet.config, vae.config.latent_channels, what=f"model {str(folder)!r}")
    sched = DDIMConfig()
    sched_file = folder / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        sched = scheduler_config(sched_file)
    scale = float(getattr(vae.config, "scaling_factor", SD_LATENT_SCALE))
    return FolderModels(tokenizer=tok, text_encoder=te, vae=vae, unet=unet, schedule=sched, latent_scale=scale)


def scheduler_config(path: Path) -> DDIMConfig:
    """The DDIM schedule of a folder's scheduler_config.json: its betas and prediction type. Like the reference,
    the steps are SD's (leading spacing, steps_offset 1, no alpha set to one) whatever the file says; a file whose
    model was trained on another noise schedule (zero terminal SNR, its own betas) is refused, not run wrongly."""
    import json

    what = f"scheduler: {str(path)!r}"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VP2PInputError(f"{what} could not be read as JSON ({e})") from None
    if not isinstance(raw, dict):
        raise VP2PInputError(f"{what}: expected a JSON object of scheduler settings, got {type(raw).__name__}")
    if raw.get("rescale_betas_zero_snr") or raw.get("trained_betas") is not None:
        raise VP2PInputError(f"{what}: a zero-terminal-SNR or trained-betas schedule is not supported; expected SD's "
                             "scaled-linear or linear betas")
    config = DDIMConfig(prediction_type=raw.get("prediction_type", "epsilon"),
                        beta_start=raw.get("beta_start", 0.00085), beta_end=raw.get("beta_end", 0.012),
                        beta_schedule=raw.get("beta_schedule", "scaled_linear"),
                        num_train_timesteps=raw.get("num_train_timesteps", 1000))
    try:
        config.check()  # an unknown prediction type or beta schedule fails now, not at the first step
    except VP2PInputError as e:
        raise VP2PInputError(f"{what}: {e}") from None
    except (TypeError, ValueError) as e:  # a number given as a string
        raise VP2PInputError(f"{what}: a setting of the wrong type ({e}); expected numbers for the betas") from None
    return config


def vae_factor(vae) -> int:
    """Image pixels per latent pixel of a diffusers AutoencoderKL: every encoder block but the last halves the
    size (SD's four blocks: 8; the small world's three: 4)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@dataclass
class Components:
    """Tokenizer, text encoder, VAE and the inflated video model of one SD-style checkpoint."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    model: VideoModel
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_folder(cls, folder: str | Path, frame_attention: str = InflationOptions.frame_attention,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    group_norm: str = InflationOptions.group_norm) -> "Components":
        """Load a diffusers-format SD folder offline (see load_folder) and inflate its UNet."""
        m = load_folder(folder, device=device, dtype=dtype)
        model = VideoModel.from_unet(m.unet, latent_scale=m.latent_scale, frame_attention=frame_attention,
                                     schedule=m.schedule, vae_factor=vae_factor(m.vae), group_norm=group_norm)
        return cls(tokenizer=m.tokenizer, text_encoder=m.text_encoder, vae=m.vae, model=model,
                   device=torch.device(device))

    @classmethod
    def from_single_file(cls, path: str | Path, tokenizer, frame_attention: str = InflationOptions.frame_attention,
                         device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         prediction_type: Optional[str] = None,
                         group_norm: str = InflationOptions.group_norm) -> "Components":
        """Load an original-layout SD 1.x/2.x `.safetensors` checkpoint offline (see vp2p_core.checkpoint);
        prediction_type None = guess (v_pred key / ComfyUI's SD2 heuristic, else epsilon).

        The file holds no tokenizer: ``tokenizer`` is the one its text encoder was trained with (SD's CLIP BPE
        tokenizer), as an object or as the folder of its files (vocab.json, merges.txt), which then pads as the
        checkpoint's family does (``load_tokenizer``)."""
        from .checkpoint import load_single_file, load_tokenizer

        m = load_single_file(path, prediction_type=prediction_type, dtype=dtype, device=device)
        model = VideoModel.from_unet(m.unet, latent_scale=m.latent_scale, frame_attention=frame_attention,
                                     schedule=DDIMConfig(prediction_type=m.prediction_type),
                                     vae_factor=vae_factor(m.vae), group_norm=group_norm)
        if isinstance(tokenizer, (str, Path)):  # SD 2.x pads with "!", SD 1.x with the end token
            tokenizer = load_tokenizer(tokenizer, family=m.family)
        return cls(tokenizer=tokenizer, text_encoder=m.text_encoder, vae=m.vae, model=model,
                   device=torch.device(device))

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].float()

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, chunk: int = DecodeOptions.frames_per_chunk) -> torch.Tensor:
        """frames [F,H,W,3] in 0..1 -> scaled latents [F,C,h,w] (the posterior mean, as the reference), in chunks
        of frames: a long clip is never in the VAE at once."""
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise VP2PInputError(f"frames: expected [F,H,W,3] in 0..1, got shape {tuple(frames.shape)}")
        out = []
        dtype = next(self.vae.parameters()).dtype
        for i in range(0, frames.shape[0], chunk):
            x = frames[i:i + chunk].permute(0, 3, 1, 2).to(self.device, dtype) * 2 - 1
            out.append(self.vae.encode(x).latent_dist.mean.float() * self.model.latent_scale)
        return torch.cat(out)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int = DecodeOptions.frames_per_chunk) -> torch.Tensor:
        """scaled latents [F,C,h,w] -> frames [F,H,W,3] in 0..1, decoded in chunks into one tensor (the frames exist
        once at full size, never as chunks plus their concatenation)."""
        out = None
        dtype = next(self.vae.parameters()).dtype
        for i in range(0, latents.shape[0], chunk):
            z = latents[i:i + chunk].to(self.device, dtype) / self.model.latent_scale
            img = ((self.vae.decode(z).sample.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
            if out is None:
                out = torch.empty((latents.shape[0], *img.shape[1:]))
            out[i:i + img.shape[0]] = img
        return out

    def plan(self, source: str, targets: str | Sequence[str], options: EditOptions = EditOptions(),
             cross_replace_words: Optional[dict] = None) -> EditPlan:
        plan = build_edit_plan(self.tokenizer, source_prompt=source, target_prompts=targets, options=options,
                               cross_replace_words=cross_replace_words)
        plan.source_embedding = self.encode_prompts([source])
        plan.target_embeddings = self.encode_prompts(plan.target_prompts)
        plan.empty_embedding = self.encode_prompts([""])
        return plan


@dataclass
class RunResult:
    edited: torch.Tensor  # frames [n,F,H,W,3]; composited over the source frames when that was asked for
    source: torch.Tensor  # reconstruction frames [F,H,W,3]
    edit: EditResult
    inversion: Inversion
    delta: Optional[Delta]
    timings: dict
    evaluations: dict
    decoded: Optional[torch.Tensor] = None  # the decoded edit before compositing [n,F,H,W,3]
    composited: bool = False
    light: Optional[torch.Tensor] = None  # the light's RGB gain per frame [F,3] taken out before encoding, or None


def check_run_frames(frames, vae_factor: int) -> None:
    """``run``'s frames: RGB [F, H, W, 3] floats in 0..1 (a grey level of slack), H and W multiples of the VAE's
    factor; refused before any work (frames of 66 px failed at the decode, after the whole edit)."""
    check_frames(frames, "frames")
    lo, hi = float(frames.min()), float(frames.max())
    if not (lo >= -1 / 255 and hi <= 1 + 1 / 255):  # NaN fails too
        hint = " (frames in 0..255? divide them by 255)" if hi > 2 else ""
        raise VP2PInputError(f"frames: expected values in 0..1, got {lo:.4g}..{hi:.4g}{hint}")
    height, width = frames.shape[1:3]
    if height % vae_factor or width % vae_factor:
        raise VP2PInputError(f"frames: expected a height and width divisible by the VAE's factor {vae_factor}, got "
                             f"{height}x{width}; crop or scale them (e.g. to {height // vae_factor * vae_factor}x"
                             f"{width // vae_factor * vae_factor})")


def run(components: Components, frames: torch.Tensor, source: str, targets: str | Sequence[str],
        tune: TuneOptions = TuneOptions(), inversion: InversionOptions = InversionOptions(),
        edit: EditOptions = EditOptions(), sampler: SamplerOptions = SamplerOptions(),
        composite: CompositeOptions = CompositeOptions(), host: Optional[Host] = None,
        context: Optional[ContextWindows] = None, light: LightOptions = LightOptions()) -> RunResult:
    """Inflated model -> tune -> invert -> edit -> decode (-> composite), on one clip (frames [F,H,W,3]).

    The tuning is this clip's alone: afterwards ``components.model`` has its own weights back (the tuned ones are
    ``RunResult.delta``), so a second run, on this clip or another, starts from the same model.
    ``host``: None = a plain host on the components' device (the UNet computes where they were loaded); a host on
    another device is refused.

    ``context``: tuning, inversion and the edit see the clip through these windows (None: all frames at once);
    the VAE encodes and decodes in chunks of frames either way.

    With ``composite.composite`` on and local blend in the edit, the decoded edit is pasted over ``frames``
    through the blend mask (vp2p_core.composite): outside the dilated mask, the result is the source's pixels.

    With ``light.normalise_light`` on, the clip is encoded with its light taken out (vp2p_core.light) and the
    decoded frames (edit and reconstruction) get it back, before the composite over ``frames`` as they are."""
    timings, evals = {}, {}
    cm = components
    state = cm.model.state
    if host is None:
        host = Host(device=cm.device)
    elif not same_device(torch.device(host.device), torch.device(cm.device)):
        raise VP2PInputError(f"host: its device {host.device} is not the components' {cm.device}; expected a host on "
                             "the device the models were loaded on (or None)")

    def stage(name, fn):
        e0, t0 = state.forward_clips, time.perf_counter()
        out = fn()
        host.release()
        timings[name] = time.perf_counter() - t0
        evals[name] = state.forward_clips - e0
        return out

    check_run_frames(frames, cm.model.vae_factor)
    if context is not None:
        context.check_clip(frames.shape[0], what="frames", steps=max(tune.steps, inversion.steps))
    plan = stage("plan", lambda: cm.plan(source, targets, options=edit))  # its word checks before any work
    to_encode, gains = take_light_out(frames, light.normalise_light, host=host)
    latents = stage("encode", lambda: cm.encode_frames(to_encode))
    delta = None
    with trained_weights(cm.model):  # this clip's tuning is undone on the way out
        if tune.steps > 0:
            delta = stage("tune", lambda: one_shot_tune(cm.model, latents=latents, text=plan.source_embedding,
                                                        prompt=source, options=tune, host=host, context=context))
        inv = stage("invert", lambda: invert(cm.model, latents, source_embedding=plan.source_embedding,
                                             empty_embedding=plan.empty_embedding, prompt=source,
                                             options=inversion, host=host, context=context))
        res = stage("edit", lambda: sample_edit(cm.model, inv, plan, options=sampler, host=host,
                                                context=context))
    n, f = res.edited.shape[:2]
    decoded = stage("decode", lambda: with_light(cm.decode_latents(res.edited.flatten(0, 1)), gains)
                    .view(n, f, *frames.shape[1:]))
    edited, composited = decoded, False
    if composite.composite:
        if res.blend_mask is None:
            log.warning("composite: the edit has no local-blend mask (no blend_words, or blend_start past the last "
                        "step); the decoded edit is returned as it is")
        else:
            # the frames as they are: composite_frames works in the wider dtype, so that the pixels outside the
            # mask are the source's bit for bit (float64 frames came back rounded to float32)
            edited = stage("composite", lambda: composite_frames(edited=decoded, source=frames,
                                                                 mask=res.blend_mask, options=composite,
                                                                 outline=res.blend_outline))
            composited = True
    recon = stage("decode_source", lambda: with_light(cm.decode_latents(res.source), gains))
    return RunResult(edited=edited, source=recon, edit=res, inversion=inv, delta=delta, timings=timings,
                     evaluations=evals, decoded=decoded, composited=composited, light=gains)
