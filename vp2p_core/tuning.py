"""One-shot tuning of the inflated model on one clip, as Tune-A-Video / Video-P2P train it.

Trainable: attn1.to_q, attn2.to_q and all temporal attention; AdamW (3e-5, betas 0.9/0.999, weight
decay 1e-2, eps 1e-8), constant lr, grad-clip 1.0, one random timestep per step, noise-MSE loss
(v-target for v-prediction). The latents are encoded once by the caller (the reference re-encodes the
clip with the VAE at every step), as the posterior's mean, where the reference draws a sample of it each step.
The result is a *delta*: only the trained parameters.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .context import ContextWindows, is_whole_clip
from .errors import VP2PInputError
from .files import atomic_save, load_checked, meta_json, state_fingerprint
from .host import Host
from .inflation import set_gradient_checkpointing, trainable_parameter_names, video_forward
from .model import VideoModel
from .options import TuneOptions
from .schedule import PREDICTION_TYPES, DDIMSchedule
from .thumbnail import check_same_clip, check_thumbnail, latent_thumbnail

log = logging.getLogger(__name__)

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # keyed by TuneOptions.precision
THUMBNAIL_KEY = "vp2p.source_thumbnail"  # beside the parameters in a delta file (no UNet parameter starts so)
EMBEDDING_KEY = "vp2p.source_embedding"


@dataclass
class Delta:
    """The trained parameters of a tuned model, with what they were made for."""

    tensors: dict[str, torch.Tensor]
    base_fingerprint: str
    num_frames: int
    prompt: str
    steps: int
    config: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    base_aliases: tuple[str, ...] = ()  # VideoModel.base_aliases of the model it was tuned on
    # the InflationOptions its temporal layers were trained under (frame_attention, group_norm); {}: saved before
    inflation: dict = field(default_factory=dict)
    # [F,C,<=16,<=16]: latent_thumbnail of the clip it was tuned on (None: saved before deltas kept one)
    source_thumbnail: Optional[torch.Tensor] = None
    prediction_type: str = ""  # the schedule's it was tuned under, as the loss target ("": saved before)
    # [1, 77, D]: the source prompt's text embedding it was tuned under (None: saved before deltas kept it), so that
    # an inversion under another CLIP (CLIPSetLastLayer, a CLIP LoRA) of the same prompt is refused
    source_embedding: Optional[torch.Tensor] = None

    @property
    def fingerprint(self) -> str:
        return state_fingerprint(self.tensors)

    def save(self, path) -> None:
        meta = {"vp2p_kind": "delta", "base_fingerprint": self.base_fingerprint, "num_frames": str(self.num_frames),
                "prompt": self.prompt, "steps": str(self.steps), "config": self.config, "losses": self.losses,
                "base_aliases": list(self.base_aliases), "inflation": self.inflation}
        if self.prediction_type:
            meta["prediction_type"] = self.prediction_type
        extra = {} if self.source_thumbnail is None else {THUMBNAIL_KEY: self.source_thumbnail}
        if self.source_embedding is not None:
            extra[EMBEDDING_KEY] = self.source_embedding
        atomic_save({**self.tensors, **extra}, path, meta)

    @classmethod
    def load(cls, path, what: str = "filename") -> "Delta":
        """Read a file written by ``save``; ``what`` names the input the file came from in errors."""
        tensors, meta = load_checked(path, "delta", what,
                                     meta_needed=("base_fingerprint", "num_frames", "prompt", "steps"))
        try:  # metadata a reader cannot parse is a damaged file (a cached one is then made again), not a crash
            inflation = meta_json(meta, "inflation", {})
            config, losses = meta_json(meta, "config", {}), meta_json(meta, "losses", [])
            aliases, num_frames, steps = tuple(meta_json(meta, "base_aliases", [])), int(meta["num_frames"]), \
                int(meta["steps"])
        except (ValueError, TypeError) as e:
            raise VP2PInputError(f"{what}: {str(path)!r} holds metadata that cannot be read ({e}); expected a delta "
                                 "file written by SaveVP2PDelta") from None
        if not isinstance(inflation, dict) or not set(inflation) <= {"frame_attention", "group_norm"} or \
                not all(isinstance(v, str) for v in inflation.values()):
            raise VP2PInputError(f"{what}: {str(path)!r} records an inflation of {inflation!r}; expected its "
                                 "frame_attention and group_norm, as SaveVP2PDelta writes")
        thumbnail, embedding = tensors.pop(THUMBNAIL_KEY, None), tensors.pop(EMBEDDING_KEY, None)
        if embedding is not None and (embedding.dim() != 3 or embedding.shape[0] != 1):
            raise VP2PInputError(f"{what}: {str(path)!r} holds a source embedding of shape {tuple(embedding.shape)}; "
                                 "expected [1, tokens, width], as SaveVP2PDelta writes")
        check_thumbnail(thumbnail, (num_frames,), what, path, "SaveVP2PDelta")
        prediction = meta.get("prediction_type", "")
        if prediction not in ("",) + PREDICTION_TYPES:
            raise VP2PInputError(f"{what}: {str(path)!r} records the prediction type {prediction!r}; expected "
                                 "epsilon or v_prediction, as SaveVP2PDelta writes")
        return cls(tensors=tensors, base_fingerprint=meta["base_fingerprint"], num_frames=num_frames,
                   prompt=meta["prompt"], steps=steps, config=config, losses=losses, base_aliases=aliases,
                   inflation=inflation, source_thumbnail=thumbnail, prediction_type=prediction,
                   source_embedding=embedding)


def make_trainable_copyable(module: torch.nn.Module) -> None:
    """Replace inference-mode tensors (ComfyUI builds models under inference_mode) by normal ones."""
    with torch.inference_mode(False):
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.is_inference():
                    m._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=p.requires_grad)
            for name, b in list(m._buffers.items()):
                if b is not None and b.is_inference():
                    m._buffers[name] = b.clone()


def check_delta(model: VideoModel, delta: Delta, what: str = "delta", num_frames: Optional[int] = None,
                latents: Optional[torch.Tensor] = None) -> None:
    """Refuse a delta made for another checkpoint (or LoRA) or prediction type, for another clip length, or (given
    the clip's scaled ``latents`` [F,C,h,w], and where the delta keeps its clip's thumbnail) another clip, or whose
    tensors the model lacks or tuning does not train; ``what`` names the input in the error."""
    if latents is not None:
        num_frames = latents.shape[0]
    if not {delta.base_fingerprint, *delta.base_aliases} & {model.base_fingerprint, *model.base_aliases}:
        raise VP2PInputError(
            f"{what}: made for the model with fingerprint {delta.base_fingerprint}, but this model is "
            f"{model.base_fingerprint} (another checkpoint or LoRA; the same one in another precision fits); load "
            "the checkpoint it was tuned on, or tune again")
    if num_frames is not None and num_frames != delta.num_frames:
        raise VP2PInputError(f"{what}: tuned on {delta.num_frames} frames, but the clip has {num_frames} frames; "
                             "tune on this clip, or use the clip it was tuned on")
    if delta.prediction_type and delta.prediction_type != model.schedule.prediction_type:
        raise VP2PInputError(f"{what}: tuned with the model read as {delta.prediction_type}, but this model predicts "
                             f"{model.schedule.prediction_type} (ModelSamplingDiscrete); load it as it was tuned, or "
                             "tune again")
    if latents is not None and delta.source_thumbnail is not None:
        check_same_clip(delta.source_thumbnail, latents, what, made="tuned on", whose="the tuned clip's",
                        remedy="pass the clip the delta was tuned on, with its light normalised as it was then "
                               "(Normalise Light, normalise_light), or tune on this clip")
    for name, tuned_with in delta.inflation.items():  # its temporal layers learnt what these frames see
        now = getattr(model, name)
        if tuned_with != now:
            raise VP2PInputError(f"{what}: tuned with {name} {tuned_with!r}, but this model's is {now!r}; set "
                                 f"InflateUNet's {name} to {tuned_with!r}, or tune again")
    params = dict(model.unet.named_parameters())
    trained = set(trainable_parameter_names(model.unet))
    for name, t in delta.tensors.items():
        if name not in params:
            raise VP2PInputError(f"{what}: the parameter {name!r} is not in this model")
        if name not in trained:  # trained_weights restores only these: any other would change the shared base
            raise VP2PInputError(f"{what}: holds {name!r}, which one-shot tuning does not train (a delta holds the "
                                 "attention queries and the temporal attention only); save it with Save Tuned Delta")
        if tuple(params[name].shape) != tuple(t.shape):
            raise VP2PInputError(
                f"{what}: {name} has shape {tuple(t.shape)}, this model's is {tuple(params[name].shape)}")


def apply_delta(model: VideoModel, delta: Delta, num_frames: Optional[int] = None) -> None:
    """Load a delta into the model in place, refusing one made for another model or clip length."""
    check_delta(model, delta, num_frames=num_frames)
    params = dict(model.unet.named_parameters())
    with torch.inference_mode(False), torch.no_grad():
        for n, t in delta.tensors.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    model.delta_fingerprint = delta.fingerprint


@contextlib.contextmanager
def trained_weights(model: VideoModel, delta: Optional[Delta] = None):
    """Within the block the model carries ``delta`` (or its current weights); afterwards exactly what it
    had before, so a model shared between graph nodes is never changed by one of them. The copy it restores
    from is kept on the CPU (SD 1.5's tuned layers are about 300 MB, which a GPU host does not count)."""
    params = dict(model.unet.named_parameters())
    names = trainable_parameter_names(model.unet)
    with torch.inference_mode(False):
        saved = {n: params[n].detach().to("cpu", copy=True) for n in names}
    # no reference to the parameters across the block: a stage may replace them (make_trainable_copyable, after
    # ComfyUI's inference-mode load), and the old ones held here stayed on the GPU beside the new (the whole UNet)
    del params
    saved_fp = model.delta_fingerprint
    if delta is not None:
        apply_delta(model, delta)
    try:
        yield model
    finally:
        params = dict(model.unet.named_parameters())
        with torch.inference_mode(False), torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
        model.delta_fingerprint = saved_fp


def one_shot_tune(model: VideoModel, latents: torch.Tensor, text: torch.Tensor, prompt: str = "",
                  options: TuneOptions = TuneOptions(), host: Host = Host(),
                  context: Optional[ContextWindows] = None) -> Delta:
    """Tune ``model`` in place on one clip. latents [F,C,h,w] (already scaled), text [1,L,D].

    ``context``: on a clip longer than one window, each step trains on one window drawn at random from the
    context windows (Tune-A-Video samples a few frames of the clip per step the same way), its anchor row
    (the clip's first frame, vp2p_core.context) seen but left out of the loss."""
    if latents.dim() != 4:
        raise VP2PInputError(f"latents: expected [frames, channels, h, w], got shape {tuple(latents.shape)}")
    model.check_float32("model", "one-shot tuning needs float32 weights (TuneOptions.precision sets bf16 / fp16 "
                                 "autocast)")
    if context is not None:
        context.check_clip(latents.shape[0], steps=options.steps)
    unet = model.unet
    host.load_module(unet)
    device = host.device
    f = latents.shape[0]
    schedule = DDIMSchedule(model.schedule, 1)
    names = trainable_parameter_names(unet)
    with torch.inference_mode(False), torch.enable_grad():
        make_trainable_copyable(unet)
        params = dict(unet.named_parameters())
        flags = {n: p.requires_grad for n, p in params.items()}
        for n, p in params.items():
            p.requires_grad_(n in names)
        trainable = [params[n] for n in names]
        opt = torch.optim.AdamW(trainable, lr=options.learning_rate, betas=options.betas,
                                weight_decay=options.weight_decay, eps=options.eps)
        x0 = latents.clone().to(device, torch.float32)
        cond = text.clone().to(device, model.weight_dtype)
        gen = torch.Generator().manual_seed(options.seed)
        ac_dtype = AUTOCAST[options.precision]
        scaler = torch.amp.GradScaler(device.type) if ac_dtype == torch.float16 and device.type == "cuda" else None
        was_training, was_checkpointing = unet.training, bool(unet.is_gradient_checkpointing)
        set_gradient_checkpointing(unet, options.gradient_checkpointing)
        unet.train()
        losses: list[float] = []
        loop = host.loop(options.steps, "tuning")
        try:
            for step in range(options.steps):
                windows = (context.windows(f, step=step, frame_attention=model.frame_attention)
                           if context is not None else None)
                if windows is None or is_whole_clip(windows, f):
                    xs, fw, rows = x0, f, None  # the whole clip (no draw: the same random stream as ever)
                else:
                    w = windows[int(torch.randint(0, len(windows), (1,), generator=gen))]
                    xs, fw = x0[list(w.frames)], len(w)
                    rows = [k for k, v in enumerate(w.weights) if v > 0]
                noise = torch.randn(xs.shape, generator=gen).to(device)
                t = torch.randint(0, model.schedule.num_train_timesteps, (1,), generator=gen).to(device)
                noisy = schedule.add_noise(xs, noise, t.expand(fw))
                target = noise if model.schedule.prediction_type == "epsilon" else schedule.velocity(xs, noise, t.expand(fw))
                ctx = torch.autocast(device.type, dtype=ac_dtype) if ac_dtype else contextlib.nullcontext()
                with ctx:
                    pred = video_forward(unet, noisy.to(cond.dtype), t, cond, fw)
                if rows is not None and len(rows) < fw:  # the anchor row is context, not a training target
                    pred, target = pred[rows], target[rows]
                loss = F.mse_loss(pred.float(), target.float())
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                loop.step(step + 1, loss=losses[-1])
        finally:
            for n, p in params.items():
                p.grad = None  # a step that failed (out of memory) leaves its gradients: the next tuning adds to them
                p.requires_grad_(flags[n])
            set_gradient_checkpointing(unet, was_checkpointing)
            unet.train(was_training)
            del opt
    delta = Delta(tensors={n: params[n].detach().cpu().clone() for n in names},
                  base_fingerprint=model.base_fingerprint, num_frames=f, prompt=prompt, steps=options.steps,
                  config=options.cache_key(), losses=losses, base_aliases=model.base_aliases,
                  inflation={"frame_attention": model.frame_attention, "group_norm": model.group_norm},
                  source_thumbnail=latent_thumbnail(latents), prediction_type=model.schedule.prediction_type,
                  source_embedding=text.detach().to("cpu", torch.float32).clone())
    if context is not None and not is_whole_clip(context.windows(f, frame_attention=model.frame_attention), f):
        delta.config["context"] = context.options.cache_key()
    model.delta_fingerprint = delta.fingerprint
    return delta
