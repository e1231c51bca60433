"""DDIM inversion and null-text optimisation of one unconditional embedding shared by all frames.

Modes:
- ``null_text``: the reference's loop. Per step, Adam on the embedding, lr ``lr_scale`` * 1e-2*(1-i/100) (the
  reference's 50 steps; past 50 steps the decay stretches over them, 1-i/(2*steps), where the reference's rate
  would reach 0 at step 100 and turn negative), up to ``inner_steps`` iterations, stop when the loss <
  early_stop + i*2e-5 (past 50 steps i*2e-5*50/steps: the reference's bound over the schedule) or
  (``early_stop_ratio`` > 0) below that fraction of the step's first loss; the result
  seeds the next step. The reference's budget is lr_scale 1, 10 iterations, ratio 0: on the small-world model its
  stop never fires and its small steps leave the loss high.
  The defaults (10, 4, 0.8) take larger steps and stop before they overshoot: on five clips they reconstruct
  1.4-7.5 dB better with a third of the reference's backward passes (bench/null_text_budget.py, BENCHMARKS.md).
  We test the stop condition *before* stepping, so the embedding kept is one whose loss is known to be
  below the bound, and its guided step (already computed) becomes the next latent: no extra forward.
  The conditional prediction is computed once per step and reused for the guided step.
- ``fast``: no optimisation; the source branch samples with its conditional prediction only.
- ``negative_prompt``: the source prompt's embedding serves as the unconditional one (no optimisation).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .context import ContextWindows, Window, fuse, is_whole_clip, normalised_weights, whole_clip, windows_signature
from .errors import VP2PInputError
from .files import atomic_save, load_checked, meta_json
from .host import Host
from .inflation import set_gradient_checkpointing, video_forward
from .memory import call_rows, checkpoint_null_text
from .model import VideoModel
from .options import INVERSION_MODES, InversionOptions
from .schedule import DDIMConfig, DDIMSchedule
from .thumbnail import check_same_clip, check_thumbnail, latent_thumbnail
from .tuning import make_trainable_copyable

log = logging.getLogger(__name__)

@dataclass
class Inversion:
    """What editing needs from the source clip: x_T, the per-step null embeddings and the source trajectory."""

    x_T: torch.Tensor  # [F,C,h,w]
    source_embedding: torch.Tensor  # [1,L,D]
    timesteps: torch.Tensor  # [T]
    mode: str
    guidance: float
    prompt: str
    model_fingerprint: str
    schedule: DDIMConfig
    null_embeddings: Optional[torch.Tensor] = None  # [T,L,D] (null_text)
    trajectory: Optional[torch.Tensor] = None  # [T,F,C,h,w]: source latents after each guided step
    stats: dict = field(default_factory=dict)
    source_thumbnail: Optional[torch.Tensor] = None  # [F,C,<=16,<=16]: latent_thumbnail of the inverted clip
    model_aliases: tuple[str, ...] = ()  # VideoModel.fingerprints beyond the first: the model in half precision

    @property
    def num_frames(self) -> int:
        return self.x_T.shape[0]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    def uncond_for_step(self, i: int) -> torch.Tensor:
        """The source branch's unconditional embedding at step i, [1,L,D]."""
        if self.mode == "null_text":
            return self.null_embeddings[i:i + 1]
        return self.source_embedding

    def save(self, path) -> None:
        tensors = {"x_T": self.x_T, "source_embedding": self.source_embedding, "timesteps": self.timesteps}
        if self.null_embeddings is not None:
            tensors["null_embeddings"] = self.null_embeddings
        if self.trajectory is not None:
            tensors["trajectory"] = self.trajectory
        if self.source_thumbnail is not None:
            tensors["source_thumbnail"] = self.source_thumbnail
        meta = {"vp2p_kind": "inversion", "mode": self.mode, "guidance": repr(float(self.guidance)),
                "prompt": self.prompt, "model_fingerprint": self.model_fingerprint,
                "schedule": json.dumps(self.schedule.to_dict()), "num_frames": str(self.num_frames),
                "model_aliases": json.dumps(list(self.model_aliases)),
                "stats": json.dumps(self.stats)}
        atomic_save(tensors, path, meta)

    @classmethod
    def load(cls, path, what: str = "filename") -> "Inversion":
        """Read a file written by ``save``; ``what`` names the input the file came from in errors."""
        t, meta = load_checked(path, "inversion", what, tensors_needed=("x_T", "source_embedding", "timesteps"),
                               meta_needed=("mode", "guidance", "prompt", "model_fingerprint", "schedule"))
        nulls = t.get("null_embeddings")
        if meta["mode"] == "null_text" and (nulls is None or nulls.shape[0] != t["timesteps"].shape[0]):
            found = "none" if nulls is None else f"{nulls.shape[0]}"
            raise VP2PInputError(f"{what}: {str(path)!r} is a null-text inversion of {t['timesteps'].shape[0]} steps "
                                 f"with {found} null embeddings; expected one per step, as SaveVP2PInversion writes")
        check_thumbnail(t.get("source_thumbnail"), tuple(t["x_T"].shape[:2]), what, path, "SaveVP2PInversion")
        if meta["mode"] not in INVERSION_MODES:
            raise VP2PInputError(f"{what}: {str(path)!r} records the inversion mode {meta['mode']!r}; expected one of "
                                 f"{', '.join(INVERSION_MODES)}")
        try:  # metadata a reader cannot parse is a damaged file (a cached one is then made again), not a crash
            schedule = DDIMConfig.from_dict(meta_json(meta, "schedule")).check()
            return cls(x_T=t["x_T"], source_embedding=t["source_embedding"], timesteps=t["timesteps"],
                       mode=meta["mode"], guidance=float(meta["guidance"]), prompt=meta["prompt"],
                       model_fingerprint=meta["model_fingerprint"], schedule=schedule,
                       null_embeddings=t.get("null_embeddings"), trajectory=t.get("trajectory"),
                       stats=meta_json(meta, "stats", {}), source_thumbnail=t.get("source_thumbnail"),
                       model_aliases=tuple(meta_json(meta, "model_aliases", [])))
        except (ValueError, TypeError, AttributeError, VP2PInputError) as e:
            raise VP2PInputError(f"{what}: {str(path)!r} holds metadata that cannot be read ({e}); expected an "
                                 "inversion file written by SaveVP2PInversion") from None

    def check_model(self, fingerprints: str | Sequence[str], what: str = "inversion") -> None:
        """Refuse this inversion for a model (``VideoModel.fingerprints``: its fingerprint and those of its weights
        in half precision) it was not made with."""
        fingerprints = (fingerprints,) if isinstance(fingerprints, str) else tuple(fingerprints)
        if not {self.model_fingerprint, *self.model_aliases} & set(fingerprints):
            raise VP2PInputError(
                f"{what}: made with the model {self.model_fingerprint}, but this model is {fingerprints[0]} "
                "(another checkpoint, LoRA or tuning, or InflateUNet's frame_attention or group_norm set otherwise; "
                "the same one in another precision fits); invert again with this model")

    def check_latents(self, latents: torch.Tensor, what: str = "inversion") -> None:
        """Refuse this inversion for a clip (scaled latents [F,C,h,w]) of another length or frame size, or (when
        it carries the thumbnail of its clip; files saved before it did not) for another clip of the same size."""
        if latents.shape[0] != self.num_frames:
            raise VP2PInputError(f"{what}: made from a clip of {self.num_frames} frames, but the latent has "
                                 f"{latents.shape[0]} frames")
        if tuple(latents.shape[1:]) != tuple(self.x_T.shape[1:]):
            raise VP2PInputError(f"{what}: made from latents of {tuple(self.x_T.shape[1:])}, but the latent is "
                                 f"{tuple(latents.shape[1:])} (another frame size)")
        if self.source_thumbnail is not None:
            check_same_clip(self.source_thumbnail, latents, what, made="made from", whose="the inverted clip's",
                            remedy="pass the clip the inversion was made from, with its light normalised as it was "
                                   "then (Normalise Light, normalise_light), or invert this clip")


def _eps(model: VideoModel, schedule: DDIMSchedule, x, t, text, f):
    return schedule.to_eps(video_forward(model.unet, x, t, text, f), t, x)


def windowed_eps(model: VideoModel, schedule: DDIMSchedule, x: torch.Tensor, t, text: torch.Tensor,
                 windows: list[Window], interrupt: Callable[[], None] = lambda: None) -> torch.Tensor:
    """eps of one clip x [F,C,h,w], the UNet called once per context window and the windows fused per frame;
    ``interrupt`` (the host's stop button) asked before each window (a long clip's step is many of them)."""
    def one(xw, w, _):
        interrupt()
        return _eps(model, schedule, xw[0], t, text, len(w)).unsqueeze(0)

    return fuse(one, x.unsqueeze(0), windows)[0]


@torch.no_grad()
def ddim_inversion(model: VideoModel, latents: torch.Tensor, text: torch.Tensor, schedule: DDIMSchedule,
                   host: Host = Host(), context: Optional[ContextWindows] = None,
                   keep_all: bool = True, keep_on: Optional[torch.device] = None) -> list[torch.Tensor]:
    """[x_0, x_1, ..., x_T] with the source prompt and no guidance (the reference's ``ddim_loop``); with
    ``keep_all`` False only [x_0, x_T] (fast inversion needs no more, and a long clip's T latents add up).
    ``keep_on``: with ``keep_all``, where the latents before x_T go (null-text keeps them on the CPU and takes one
    to the device per step: 128 frames at 512 px, 50 steps, are 400 MiB of float32); x_T stays where it was
    computed."""
    f = latents.shape[0]
    x = latents

    def kept(v: torch.Tensor) -> torch.Tensor:
        return v if keep_on is None else v.to(keep_on)

    out = [kept(x) if keep_all else x]
    loop = host.loop(schedule.num_steps, "DDIM inversion")
    T = schedule.num_steps
    for i, t in enumerate(schedule.timesteps.flip(0).tolist()):
        # the windows of this timestep's step in denoising order, as null-text and the edit see it (ComfyUI's
        # uniform schedules shift their windows from step to step)
        windows = (context.windows(f, step=T - 1 - i, frame_attention=model.frame_attention) if context
                   else whole_clip(f))
        x = schedule.next_step(windowed_eps(model, schedule, x, t, text, windows, host.interrupt), t, x)
        if keep_all and i < T - 1:
            out.append(kept(x))
        loop.step(i + 1, preview=x)
    return out + [x] if keep_all else [latents, x]


def invert(model: VideoModel, latents: torch.Tensor, source_embedding: torch.Tensor,
           empty_embedding: Optional[torch.Tensor] = None, prompt: str = "",
           options: InversionOptions = InversionOptions(), host: Host = Host(),
           context: Optional[ContextWindows] = None) -> Inversion:
    """Invert a clip (latents [F,C,h,w], scaled) with the source prompt; ``context``: the UNet sees the clip
    through these windows (None: all frames at once)."""
    mode, num_steps, guidance = options.mode, options.steps, options.guidance
    if latents.dim() != 4:
        raise VP2PInputError(f"latents: expected [frames, channels, h, w], got shape {tuple(latents.shape)}")
    if mode == "null_text" and empty_embedding is None:
        raise VP2PInputError("empty_embedding: null-text inversion starts from the empty prompt's embedding")
    if mode == "null_text":  # fp16 Adam's steps underflow: every null embedding NaN
        model.check_float32("model", "null-text inversion needs float32 weights (or mode fast)")
    if context is not None:
        context.check_clip(latents.shape[0], steps=num_steps)
    unet = model.unet
    host.load_module(unet)
    dtype = model.weight_dtype
    schedule = DDIMSchedule(model.schedule, num_steps)
    evals0 = model.evaluations()
    with torch.inference_mode(False):
        x0 = latents.clone().to(host.device, torch.float32)  # float32 latents whatever the weights (video_forward)
        cond = source_embedding.clone().to(host.device, dtype)
        steps = schedule.num_steps
        overall = 2 * steps if mode == "null_text" else steps  # one progress bar over both stages
        t0 = time.perf_counter()
        ddim = ddim_inversion(model, x0, cond, schedule, host.stage(0, overall), context=context,
                              keep_all=mode == "null_text", keep_on=torch.device("cpu"))
        stats = {"ddim_forwards": model.evaluations() - evals0, "ddim_seconds": time.perf_counter() - t0,
                 # the windows it was made through ("": the whole clip), for the sampler to compare with its own
                 "windows": windows_signature(context, latents.shape[0], steps, model.frame_attention)}
        inv = Inversion(x_T=ddim[-1].detach().cpu(), source_embedding=cond.detach().cpu(),
                        timesteps=schedule.timesteps.clone(), mode=mode, guidance=float(guidance), prompt=prompt,
                        model_fingerprint=model.fingerprint, model_aliases=model.fingerprints[1:],
                        schedule=model.schedule, stats=stats,
                        source_thumbnail=latent_thumbnail(latents))
        if mode == "null_text":
            nulls, traj, nstats = null_text_optimisation(model, ddim, cond,
                                                         empty_embedding.clone().to(host.device, dtype), schedule,
                                                         options, host.stage(steps, overall), context=context)
            inv.null_embeddings, inv.trajectory = nulls.cpu(), traj.cpu()
            stats.update(nstats)
            stats["null_text_seconds"] = time.perf_counter() - t0 - stats["ddim_seconds"]
    stats["forwards"] = model.evaluations() - evals0
    log.info("inversion (%s): %s", mode, {k: v for k, v in stats.items() if not isinstance(v, list)})
    return inv


def null_text_optimisation(model: VideoModel, ddim: list[torch.Tensor], cond: torch.Tensor, empty: torch.Tensor,
                           schedule: DDIMSchedule, options: InversionOptions, host: Host,
                           context: Optional[ContextWindows] = None):
    """One null embedding per step for the whole clip. With context windows, each window's loss is its frames'
    share of the clip's MSE (fuse weights normalised over the windows), so the losses sum to the clip's loss and
    a model whose frames do not interact gets the whole clip's gradient; the gradients of all windows are summed
    (one backward per window, so memory is one window's) and Adam takes one step per iteration. The stop test
    needs every window's loss, so an iteration that stops has run its windows' backwards for nothing.
    ``options.null_text_checkpointing`` (vp2p_core.memory.checkpoint_null_text) trades recomputation for the
    backward's activations; the embeddings are the same either way."""
    unet = model.unet
    f = ddim[0].shape[0]
    T = schedule.num_steps
    guidance, inner_steps, early_stop, lr_scale, ratio = (options.guidance, options.inner_steps, options.early_stop,
                                                          options.lr_scale, options.early_stop_ratio)
    make_trainable_copyable(unet)
    checkpointing = checkpoint_null_text(options.null_text_checkpointing,
                                         call_rows(f, context, frame_attention=model.frame_attention, steps=T),
                                         ddim[0].shape[-2:], model.weight_dtype, host.available_memory())
    was_checkpointing = bool(unet.is_gradient_checkpointing)
    if checkpointing:
        log.info("null-text optimisation: gradient checkpointing on (null_text_checkpointing %s)",
                 options.null_text_checkpointing)
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)  # gradients for the embedding only
    nulls, traj, iters, losses = [], [], [], []
    backwards = 0
    x = ddim[-1]
    e = empty.detach()
    loop = host.loop(T, "null-text optimisation")
    try:
        set_gradient_checkpointing(unet, checkpointing)
        for i, t in enumerate(schedule.timesteps.tolist()):
            target = ddim[T - 1 - i].to(x.device)  # the path waits on the CPU (ddim_inversion's keep_on)
            windows = (context.windows(f, step=i, frame_attention=model.frame_attention) if context
                       else whole_clip(f))
            e = e.detach().clone().requires_grad_(True)  # a new tensor: Adam steps it in place
            opt = torch.optim.Adam([e], lr=lr_scale * 1e-2 * (1.0 - i / max(100.0, 2.0 * T)))
            # the reference's bound over its 50 steps; past 50 it stretches over them as the rate's decay does
            # (at 500 steps it would reach 1e-2, ten times the reference's last bound, on losses that shrink with the
            # step size: the stop would end every later step before its first iteration)
            bound = early_stop + i * 2e-5 * min(1.0, 50.0 / T)
            if is_whole_clip(windows, f):
                rec, j, loss_v, b = _null_step_whole(model, schedule, x, t, cond, e, target, guidance, inner_steps,
                                                     bound, ratio, opt, host.interrupt)
            else:
                rec, j, loss_v, b = _null_step_windowed(model, schedule, x, t, cond, e, target, guidance,
                                                        inner_steps, bound, ratio, opt, windows, host.interrupt)
            backwards += b
            x = rec.detach()
            e = e.detach()
            nulls.append(e[0])
            traj.append(x.cpu())  # the trajectory is the inversion's, on the CPU (a long clip's T latents add up)
            iters.append(j + 1)
            losses.append(loss_v)
            loop.step(i + 1, preview=x, loss=loss_v, inner=j + 1)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        set_gradient_checkpointing(unet, was_checkpointing)
    stats = {"inner_iterations": iters, "losses": losses, "null_backwards": backwards,
             "gradient_checkpointing": checkpointing}
    return torch.stack(nulls), torch.stack(traj), stats


def _stops(loss: float, first: float, bound: float, ratio: float) -> bool:
    """The stop test of one null-text iteration: under the reference's absolute bound, or (ratio > 0) under that
    fraction of the step's first loss."""
    return loss < bound or (ratio > 0 and loss < ratio * first)


def _null_step_whole(model, schedule, x, t, cond, e, target, guidance, inner_steps, bound, ratio, opt, interrupt):
    """One DDIM step's optimisation with all frames in one UNet call."""
    f = x.shape[0]
    with torch.no_grad():
        eps_c = _eps(model, schedule, x, t, cond, f)
    rec, j, loss_v, backwards = None, 0, float("nan"), 0
    with torch.enable_grad():
        for j in range(inner_steps):
            interrupt()  # the stop button between a step's forward and backward passes, not only between steps
            eps_u = _eps(model, schedule, x, t, e, f)
            rec = schedule.prev_step(eps_u + guidance * (eps_c - eps_u), t, x)
            loss = F.mse_loss(rec, target)
            loss_v = float(loss.detach())
            first = loss_v if j == 0 else first
            if _stops(loss_v, first, bound, ratio):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            backwards += 1
            opt.step()
            rec = None
    if rec is None:  # never under the bound: step with the last embedding
        with torch.no_grad():
            eps_u = _eps(model, schedule, x, t, e, f)
            rec = schedule.prev_step(eps_u + guidance * (eps_c - eps_u), t, x)
    return rec, j, loss_v, backwards


def windowed_null_loss(rec: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A window's share of the clip's MSE: rec, target [Fw,C,h,w]; weights [Fw] normalised over the windows."""
    per_frame = (rec - target).pow(2).flatten(1).mean(1)
    return (per_frame * weights.to(per_frame.dtype)).sum() / num_frames


def _null_step_windowed(model, schedule, x, t, cond, e, target, guidance, inner_steps, bound, ratio, opt, windows,
                        interrupt):
    """One DDIM step's optimisation with the clip seen through context windows (see null_text_optimisation)."""
    f = x.shape[0]
    norm = normalised_weights(windows, f, device=x.device)
    parts = []
    with torch.no_grad():
        for w in windows:
            idx = w.index(x.device)
            parts.append((idx, x.index_select(0, idx), target.index_select(0, idx),
                          _eps(model, schedule, x.index_select(0, idx), t, cond, len(w))))
    def run_windows(grad: bool):
        """The clip's guided step (windows fused) and loss; with ``grad``, each window's backward."""
        rec, total, n_back = torch.zeros_like(x), 0.0, 0
        for (idx, xw, tw, eps_c), wn in zip(parts, norm):
            interrupt()  # a step is inner_steps x windows forward and backward passes: the stop button per window
            with torch.set_grad_enabled(grad):
                eps_u = _eps(model, schedule, xw, t, e, len(idx))
                rec_w = schedule.prev_step(eps_u + guidance * (eps_c - eps_u), t, xw)
                loss = windowed_null_loss(rec_w, tw, wn, f)
            total += float(loss.detach())
            rec.index_add_(0, idx, rec_w.detach() * wn.to(rec_w.dtype).view(-1, 1, 1, 1))
            if grad:
                loss.backward()
                n_back += 1
        return rec, total, n_back

    rec, j, loss_v, backwards = None, 0, float("nan"), 0
    for j in range(inner_steps):
        opt.zero_grad(set_to_none=True)
        rec, loss_v, b = run_windows(grad=True)
        backwards += b
        first = loss_v if j == 0 else first
        if _stops(loss_v, first, bound, ratio):
            break
        opt.step()
        rec = None
    if rec is None:  # never under the bound: step with the last embedding
        rec, _, _ = run_windows(grad=False)
    opt.zero_grad(set_to_none=True)
    return rec, j, loss_v, backwards
