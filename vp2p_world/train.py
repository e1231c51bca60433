"""Train the shipped tiny text-to-image model of the small world (VAE, then UNet + text encoder).

    python -m vp2p_world.train --out W          # the shipped model: VAE, stage 1, stage 2, VAE fine-tune (~42 min)

Seeded and reproducible on the same hardware (same torch build, thread count and CPU: the VAE stage rerun on
another 2-core VM gave a scaling factor of 0.6796 against 0.6827); times in ``weights/training.json``. Single
frames of rendered clips with their captions ("a red ball bouncing on green grass"), 10% caption dropout
for classifier-free guidance; ``--moving`` adds clips of the moving world (not in the shipped model). Stages:
VAE (800 steps) with the object's (and an occluder's) pixels weighted 10x; UNet + text encoder stage 1 (4500
steps) with the object's latents weighted 4x, min-SNR loss weights and a weight average (EMA) as the saved
model; stage 2 (600 steps) unweighted at a lower rate with a grounding loss on the cross-attention maps
(colour and shape words onto the object, background words onto the rest: the maps Prompt-to-Prompt's word
swap and local blend read); last, the VAE fine-tuned on moving clips (600 steps) with its latents of the still
world held where the UNet learned them (``finetune_vae``). Both UNet stages train with offset noise, so the
text, not the noise, sets the background. The VAE maps 64x64 frames to 16x16x4 latents (factor 4); its
scaling factor is measured (1 / std of the latents), not assumed. The UNet has cross-attention at 16x16,
8x8 and 4x4 with 16-dim heads, like SD's layout one level smaller. Written as a diffusers folder of
safetensors, atomically; a stopped run resumes at the UNet with ``--vae-from W.vae``, at stage 2 with
``--vae-from W.vae --resume W.stage1 --unet-steps 0``, and at the VAE fine-tune with ``--vae-from W.stage2/vae
--resume W.stage2 --unet-steps 0 --grounding-steps 0`` (bit for bit the whole run's result). The shipped model got
its fine-tune that way, on the folder the three stages before it had written (``--vae-from vp2p_world/weights/vae
--resume vp2p_world/weights``), so its UNet and text encoder are those stages' files, bit for bit.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vp2p_core.attention import CrossAttnProcessor, FrameState
from vp2p_core.errors import VP2PInputError
from vp2p_core.files import check_writable, process_umask

from .render import caption, random_motion, random_scene, render

log = logging.getLogger("vp2p_world.train")
HERE = Path(__file__).resolve().parent
TOKENIZER = HERE / "weights" / "tokenizer"


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
                block_out_channels=(16, 32, 64), norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def unet_config(text_dim: int) -> dict:
    return dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(48, 96, 96), norm_num_groups=16, cross_attention_dim=text_dim,
                attention_head_dim=(3, 6, 6),  # diffusers' legacy name: head *counts*, so 16-dim heads
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, projection_dim=64)


def warmup_cosine(opt, steps: int, warmup: float = 0.03):
    import math

    warm = max(1, int(warmup * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


# the share of moving clips in the training pool (see FramePool). The shipped model: 0. Tried: 0.5 with 1200 VAE
# steps (26.9 min): the VAE's round trip of moving clips rose from 26.4 to 30.2 dB (a light-drift clip 19.2 -> 29.1,
# an occluder clip 21.8 -> 28.7), prompt following stayed >= 0.99, but edit accuracy on the benchmark fell from
# 0.83 to 0.62 (0.72 with self_replace 0.5); BENCHMARKS.md, "A model trained on the moving world". The shipped
# model learns the moving world in the VAE fine-tune instead (finetune_vae), which keeps the UNet's latents.
MOVING_SHARE = 0.0


class FramePool:
    """A seeded pool of rendered clips; batches are random single frames with their captions.

    ``moving``: the share of clips that also get random camera, light, growth, occluder and texture
    (``render.random_motion``), drawn from their own generator so that the scenes themselves do not change."""

    def __init__(self, seed: int, clips: int = 1500, frames: int = 8, moving: float = 0.0):
        if not 0.0 <= moving <= 1.0:
            raise ValueError(f"FramePool moving must be in [0, 1] (share of clips), got {moving}")
        rng, motion_rng = np.random.default_rng(seed), np.random.default_rng([seed, 7])
        self.scenes = [random_scene(rng, frames=frames) for _ in range(clips)]
        self.scenes = [s.replace(**random_motion(motion_rng, s.size)) if motion_rng.random() < moving else s
                       for s in self.scenes]
        clips = [render(s) for s in tqdm(self.scenes, desc="rendering the training pool", unit="clip", disable=None)]
        self.frames = torch.stack([(c.frames * 255).round().to(torch.uint8) for c in clips])
        self.masks = torch.stack([c.masks for c in clips])  # [clips, frames, H, W] bool
        # what the VAE must keep sharp: the object and the occluder (a thin dark post the VAE otherwise paints
        # in the background's colours)
        self.foreground = self.masks | torch.stack([c.occlusion.gt(0.5) for c in clips])
        self.rng = np.random.default_rng(seed + 1)
        self.latents = None

    def sample(self, n: int):
        ci = self.rng.integers(len(self.scenes), size=n)
        fi = self.rng.integers(self.frames.shape[1], size=n)
        caps = [caption(self.scenes[c], verb=bool(self.rng.random() < 0.8)) for c in ci]
        return torch.from_numpy(ci), torch.from_numpy(fi), caps

    def images(self, ci, fi) -> torch.Tensor:
        return self.frames[ci, fi].permute(0, 3, 1, 2).float() / 127.5 - 1

    def skip(self, steps: int, n: int) -> None:
        """Draw what ``steps`` calls of ``sample(n)`` would, and drop it: a run resumed after a stage trains on
        the batches the whole run would have drawn there (every stage but the VAE fine-tune draws from this
        pool's one generator; ``skip_recorded_draws`` reads how many from the resumed folder)."""
        for _ in range(max(0, int(steps))):
            self.sample(n)

    def batch(self, n: int):
        ci, fi, caps = self.sample(n)
        return self.images(ci, fi), caps

    @torch.no_grad()
    def encode_all(self, vae, chunk: int = 256) -> None:
        """Latent means of every pool frame, once (the UNet stage never runs the VAE again)."""
        flat = self.frames.flatten(0, 1)
        out = [vae.encode(flat[i:i + chunk].permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mean
               for i in range(0, flat.shape[0], chunk)]
        self.latents = torch.cat(out).view(*self.frames.shape[:2], *out[0].shape[1:])


def skip_recorded_draws(pool: "FramePool", draws, stage: str, folder: str) -> None:
    """A run resumed from ``folder`` replays the draws of the ``stage`` it skips, as recorded there ({"steps",
    "batch"}), so that it trains on the batches the whole run would have. A folder that records none (made before
    the record, or not a stage of this run, e.g. the shipped VAE) replays nothing, with a note."""
    if not draws:
        log.info("%s: %s records no draws of %s; the batches from here on are this run's own, not a whole run's",
                 folder, folder, stage)
        return
    pool.skip(draws["steps"], draws["batch"])


def command_line_pool(parser: argparse.ArgumentParser, seed: int, clips: int, moving: float) -> FramePool:
    """The training pool of a command: FramePool checks its own settings, and a bad ``--moving`` becomes the
    parser's error that names the flag (exit 2, nothing written) rather than a traceback."""
    try:
        return FramePool(seed, clips=clips, moving=moving)
    except ValueError as e:
        parser.error(f"--moving: {e}")


def object_loss_weights(masks: torch.Tensor, size: int, weight: float, grow: int) -> torch.Tensor:
    """Per-pixel loss weights [N,1,size,size]: 1 + weight on the object and a rim of ``grow`` pixels.

    Why: the object is ~10% of a frame but all of what a prompt or an edit changes; a plain mean spends the
    loss on the background and smears the object's colour and shape. ``masks`` [N,H,W] bool are pooled to
    the ``size`` grid (the latent grid for the UNet) before growing.
    """
    m = F.adaptive_avg_pool2d(masks.float()[:, None], size)
    return 1 + weight * F.max_pool2d(m, 2 * grow + 1, 1, grow)


@torch.no_grad()
def round_trip(vae, seed: int, moving: float, clips: int = 32) -> tuple[torch.Tensor, float]:
    """Latent means of ``8 * clips`` frames drawn at random (with replacement) from ``clips`` held-out clips
    (seed + 3, never in a training pool), and their round trip's PSNR. Drawn, not every frame, as when the shipped
    VAE's scaling factor was measured: every frame would give another factor and another model."""
    x, _ = FramePool(seed + 3, clips=clips, moving=moving).batch(8 * clips)
    z = vae.encode(x).latent_dist.mean
    return z, float(10 * torch.log10(4.0 / F.mse_loss(vae.decode(z).sample.clamp(-1, 1), x)))


def vae_losses(vae, x: torch.Tensor, foreground: torch.Tensor, object_weight: float, gen: torch.Generator):
    """One VAE training step's terms for frames ``x``: the posterior, the reconstruction loss (L1 + L2, the
    object's pixels weighted by ``object_weight``) of a latent sampled with ``gen``, and the small KL term."""
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    # round trips kept the object's colour in 45% of frames without this weight, 100% with it
    w = object_loss_weights(foreground, x.shape[-1], object_weight, grow=2)
    return post, (w * ((rec - x).abs() + (rec - x).pow(2))).mean() / w.mean(), 1e-6 * post.kl().mean()


def train_vae(pool: "FramePool", steps: int, batch: int, seed: int, object_weight: float = 10.0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())  # channels_last measured slower for it (0.51 vs 0.45 s/step)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc="VAE", unit="step", disable=None):  # logged every 100 too
        ci, fi, _ = pool.sample(batch)
        post, rec_loss, kl_loss = vae_losses(vae, pool.images(ci, fi), pool.foreground[ci, fi], object_weight, gen)
        loss = rec_loss + kl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae %d/%d loss %.4f (%.0fs)", step + 1, steps, loss.item(), time.perf_counter() - t0)
    vae.eval()
    z, psnr = round_trip(vae, seed, moving=0.0)
    scale = float(1.0 / z.std())
    _, psnr_moving = round_trip(vae, seed, moving=1.0)
    vae.register_to_config(scaling_factor=scale)
    log.info("vae done: scaling factor %.4f, reconstruction PSNR %.2f dB (moving clips %.2f dB)", scale, psnr,
             psnr_moving)
    return vae, {"vae_psnr": psnr, "vae_psnr_moving": psnr_moving, "scaling_factor": scale}


def finetune_vae(vae, pool: "FramePool", steps: int, batch: int, seed: int, anchor: float = 10.0,
                 moving_clips: int = 750, object_weight: float = 10.0, check_clips: int = 32):
    """Fine-tune a trained VAE on the moving world while its latents of the still world stay where they were.

    Why: the first VAE only saw still clips, and round-trips a light-drift clip at 19 dB, an occluder clip at 22 dB
    (30 dB on still clips). Retraining the whole model on a moving pool fixes the VAE but moved the latents the UNet
    learned, and edits got worse (MOVING_SHARE). Here every batch is half still frames from ``pool`` (whose
    ``latents`` the UNet was trained on) and half frames of fully moving clips; the encoder's latent means of the
    still half are held to ``pool.latents`` with weight ``anchor`` (mean squared error), so the UNet sees the same
    latents on the still world (to about 1% of their spread) while the decoder, and the encoder off that
    world, learn light change, textures and occluders. Like SD's ft-MSE VAE, which fine-tuned only the decoder to
    keep SD's latents; here the encoder may move off the still world too. ``check_clips`` held-out clips measure
    the round trips and the drift of the still latents."""
    import copy

    if pool.latents is None:
        pool.encode_all(vae)
    before, _ = round_trip(vae, seed, moving=0.0, clips=check_clips)
    moving = FramePool(seed + 5, clips=moving_clips, frames=pool.frames.shape[1], moving=1.0)
    torch.manual_seed(seed)
    vae = copy.deepcopy(vae).float().train()  # the caller's VAE stays as it was
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-4, weight_decay=0.0, fused=True)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed + 2)
    half = batch // 2
    # its own draws of still frames: a resumed run (whose pool drew nothing yet) and a whole run draw the same
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc="VAE fine-tune", unit="step", disable=None):  # logged every 100 too
        ci = torch.from_numpy(rng.integers(len(pool.scenes), size=half))
        fi = torch.from_numpy(rng.integers(pool.frames.shape[1], size=half))
        cj, fj, _ = moving.sample(batch - half)
        post, rec_loss, kl_loss = vae_losses(vae, torch.cat([pool.images(ci, fi), moving.images(cj, fj)]),
                                             torch.cat([pool.foreground[ci, fi], moving.foreground[cj, fj]]),
                                             object_weight, gen)
        held = F.mse_loss(post.mean[:half], pool.latents[ci, fi])
        loss = rec_loss + anchor * held + kl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae fine-tune %d/%d loss %.4f latent drift %.5f (%.0fs)", step + 1, steps, loss.item(),
                     held.item(), time.perf_counter() - t0)
    vae.eval()
    (z, psnr), (_, psnr_moving) = (round_trip(vae, seed, moving=m, clips=check_clips) for m in (0.0, 1.0))
    drift = float((z - before).pow(2).mean().sqrt() / before.std())
    log.info("vae fine-tune done: reconstruction PSNR %.2f dB (moving clips %.2f dB), still latents moved by "
             "%.2f%% of their spread", psnr, psnr_moving, 100 * drift)
    return vae, {"vae_psnr": psnr, "vae_psnr_moving": psnr_moving, "latent_drift": drift, "steps": steps,
                 "anchor": anchor, "seconds": time.perf_counter() - t0}


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR.

    Why: with uniform weights the loss is spent on nearly clean timesteps, where the caption hardly
    matters; the noisy ones decide colour, shape and background, and converge about 3x faster this way.
    """
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


class WordMapKeeper:
    """Keeps the cross-attention maps of a plain diffusers UNet while installed: its attn2 layers run the core's
    CrossAttnProcessor (vp2p_core.attention), to which this is a controller that reads every map and changes
    none. ``maps`` gets one head mean [B, pixels, 77] per layer and call, inside the autograd graph (the
    grounding loss trains through it). ``with WordMapKeeper(unet) as keeper:``, or install() ... remove()."""

    def __init__(self, unet):
        self.unet, self.maps = unet, []
        self.state = FrameState(controller=self)
        self.controlled_clips = 0  # every row of the batch: set at each call by _EveryRowCrossAttn
        self._saved: dict | None = None

    def install(self) -> "WordMapKeeper":
        self._saved = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({name: _EveryRowCrossAttn(self.state, name) if name.endswith("attn2.processor")
                                      else proc for name, proc in self._saved.items()})
        return self

    def remove(self) -> None:
        if self._saved is not None:
            self.unet.set_attn_processor(self._saved)
            self._saved = None

    def __enter__(self) -> "WordMapKeeper":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # the controller protocol the core's processors read
    def reads_cross(self, name: str, tokens: int) -> bool:
        return True

    def self_replace_active(self, kind: str, tokens: int) -> bool:
        return False

    def cross(self, probs: torch.Tensor, name: str) -> torch.Tensor:
        self.maps.append(probs.mean(dim=2).flatten(0, 1))  # [B, 1 frame, heads, pixels, 77] -> [B, pixels, 77]
        return probs


class _EveryRowCrossAttn(CrossAttnProcessor):
    """The core's cross-attention on an image UNet: each batch row is one clip of one frame, and all are read."""

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.state.controller.controlled_clips = hidden_states.shape[0]
        return super().__call__(attn, hidden_states, *args, **kwargs)


class CaptionTokens:
    """Token positions of a caption's object words (colour, shape) and background words, cached."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, scene, text: str) -> tuple[list[int], list[int]]:
        from vp2p_core.text import word_token_indices

        if text not in self.cache:
            words = text.split()
            n_bg = len(scene.background.split())
            obj = [i for w in (1, 2) for i in word_token_indices(text, w, self.tokenizer)]
            bg = [i for w in range(len(words) - n_bg, len(words)) for i in word_token_indices(text, w, self.tokenizer)]
            self.cache[text] = (obj, bg)
        return self.cache[text]


def grounding_loss(maps: list[torch.Tensor], masks: torch.Tensor, obj_tokens: torch.Tensor,
                   bg_tokens: torch.Tensor, floor: float = 0.5) -> torch.Tensor:
    """Pull each object word's cross-attention map onto the object and each background word's onto the rest.

    Why: trained on the denoising loss alone, this model routed ~80% of its cross-attention through the EOS
    and padding tokens and its "red" / "ball" maps were *lower* on the object than off it, so Prompt-to-Prompt's
    word swap had nothing to swap and local blend's mask covered the frame. SD's maps are word-localised
    because of its scale and data; here the renderer's masks supervise it directly (TokenCompose's token
    loss, Wang et al. 2024) plus a floor on the words' share of each pixel's attention, so the words carry
    the content rather than the EOS summary. maps: [B, pixels, 77] per layer; masks [B,H,W] bool;
    obj_tokens / bg_tokens [B,77] 0/1 (all zero for dropped captions).
    """
    total = masks.new_zeros((), dtype=torch.float32)
    for p in maps:
        side = int(round(p.shape[1] ** 0.5))
        m = F.adaptive_avg_pool2d(masks.float()[:, None], side).flatten(1)  # object share of each cell
        region = torch.stack([m, 1 - m], dim=-1)  # [B, pixels, 2]
        for g, tokens in enumerate((obj_tokens, bg_tokens)):
            spread = p / p.sum(dim=1, keepdim=True).clamp_min(1e-8)  # each token's map over pixels
            inside = (spread * region[..., g:g + 1]).sum(dim=1)  # [B,77]
            n = tokens.sum().clamp_min(1)
            total = total + ((1 - inside).pow(2) * tokens).sum() / n
            share = (p * tokens[:, None, :]).sum(-1)  # [B, pixels]: the words' share of each pixel's attention
            weight = region[..., g] * (tokens.sum(-1, keepdim=True) > 0)
            total = total + (F.relu(floor - share) * weight).sum() / weight.sum().clamp_min(1)
    return total / max(1, len(maps))


def train_unet(pool: "FramePool", vae, tokenizer, steps: int, batch: int, seed: int, lr: float = 8e-4,
               resume="", min_snr_gamma: float = 5.0, ema_decay: float = 0.999, object_weight: float = 3.0,
               grounding_weight: float = 0.0, offset_noise: float = 0.0):
    """One UNet + text-encoder stage; ``resume`` is a trained folder or a (unet, text_encoder) pair to continue."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    if isinstance(resume, tuple):  # the next stage of the same run
        unet, te = (m.train() for m in resume)
    elif resume:  # a second stage from a trained folder
        kw = dict(torch_dtype=torch.float32, local_files_only=True)
        te = CLIPTextModel.from_pretrained(Path(resume) / "text_encoder", **kw).train()
        unet = UNet2DConditionModel.from_pretrained(Path(resume) / "unet", **kw).train()
    else:
        te = CLIPTextModel(text_config())
        unet = UNet2DConditionModel(**unet_config(te.config.hidden_size))
    unet = unet.to(memory_format=torch.channels_last)  # ~30% faster convolutions on CPU (measured)
    noise_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000)
    # the token table stays at its random init: distinct random vectors are all a 40-word world needs, and
    # its 3.2M rows would otherwise dominate every optimiser step
    te.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in list(unet.parameters()) + list(te.parameters()) if p.requires_grad]
    keeper = WordMapKeeper(unet)
    if grounding_weight > 0:
        keeper.install()
        words = CaptionTokens(tokenizer)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=True)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed + 2)
    scale = vae.config.scaling_factor
    if pool.latents is None:
        pool.encode_all(vae)
    # an exponential moving average of the weights is what gets saved: on a short run it samples far
    # cleaner images than the last iterate
    averaged = [p.detach().clone() for p in params]
    t0 = time.perf_counter()
    ema = gema = None
    for step in tqdm(range(steps), desc="UNet", unit="step", disable=None):  # logged every 100 too
        ci, fi, caps = pool.sample(batch)
        drop = torch.rand(batch, generator=gen) < 0.1
        caps = ["" if d else c for d, c in zip(drop.tolist(), caps)]
        z = (pool.latents[ci, fi] * scale).contiguous(memory_format=torch.channels_last)
        ids = tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(z.shape, generator=gen)
        if offset_noise > 0:  # see offset_noise's help in main()
            noise = noise + offset_noise * torch.randn(batch, z.shape[1], 1, 1, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noisy = noise_sched.add_noise(z, noise, t)
        keeper.maps.clear()
        pred = unet(noisy, t, encoder_hidden_states=te(ids)[0]).sample
        w = object_loss_weights(pool.masks[ci, fi], z.shape[-1], object_weight, grow=1)
        per_sample = (w * (pred - noise).pow(2)).mean(dim=(1, 2, 3))
        if min_snr_gamma > 0:
            per_sample = per_sample * min_snr_weights(noise_sched.alphas_cumprod, t, min_snr_gamma)
        loss = per_sample.mean()
        if grounding_weight > 0:
            obj_tok, bg_tok = torch.zeros(batch, 77), torch.zeros(batch, 77)
            for i, (c, text) in enumerate(zip(ci.tolist(), caps)):
                if text:
                    o, b = words(pool.scenes[c], text)
                    obj_tok[i, o], bg_tok[i, b] = 1, 1
            g = grounding_loss(keeper.maps, pool.masks[ci, fi], obj_tok, bg_tok)
            loss = loss + grounding_weight * g
            gema = g.item() if step == 0 else 0.98 * gema + 0.02 * g.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))  # warm-up: early averages forget the init
            torch._foreach_lerp_(averaged, [p.detach() for p in params], 1 - decay)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("unet %d/%d loss %.4f grounding %.4f (%.0fs)", step + 1, steps, ema,
                     gema if grounding_weight > 0 else 0.0, time.perf_counter() - t0)
    with torch.no_grad():
        for p, a in zip(params, averaged):
            p.copy_(a)
    unet = unet.to(memory_format=torch.contiguous_format)
    keeper.remove()
    return unet.eval(), te.eval(), {"unet_loss": ema, "min_snr_gamma": min_snr_gamma, "ema_decay": ema_decay,
                                      "object_weight": object_weight, "grounding_weight": grounding_weight,
                                      "offset_noise": offset_noise,
                                      "grounding_loss": gema if grounding_weight > 0 else None}


def recorded_args(args: dict) -> dict:
    """The command's arguments for the training record, with paths inside the repository made relative to it
    (a record names no machine's folders)."""
    repo = HERE.parent
    out = {}
    for k, v in args.items():
        if isinstance(v, str) and Path(v).is_absolute() and Path(v).resolve().is_relative_to(repo):
            v = str(Path(v).resolve().relative_to(repo))
        out[k] = v
    return out


def write_folder_atomically(out: Path, write, keep: tuple = ()) -> None:
    """Call ``write(tmp)`` on a new folder beside ``out`` and swap it in: ``out`` is the old folder or the new one,
    never half-written (the old one waits as ``out.old`` during the swap; a crash there leaves it to restore).
    The subfolders named in ``keep`` that ``out`` already has and the new one lacks are carried over."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        try:  # mkdtemp makes it 0700; the model folder gets the mode any other folder would
            os.chmod(tmp, 0o777 & ~process_umask())
        except OSError:
            pass
        write(tmp)
        backup = None
        if out.exists():
            backup = out.with_name(out.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            for sub in keep:
                if (out / sub).exists() and not (tmp / sub).exists():
                    shutil.copytree(out / sub, tmp / sub)
            os.replace(out, backup)
        os.replace(tmp, out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_folder(out: Path, vae, unet, te, stats: dict, half: bool = True, keep: tuple = ("tokenizer",)) -> None:
    """Write the diffusers folder next to ``out`` and swap it in (never a half-written model).

    Weights are stored as float16 to keep the shipped model small; loaders compute in float32. The subfolders
    named in ``keep`` that ``out`` already has are carried over (the mask ControlNet stays valid where the UNet
    did not change).
    """
    import copy

    from diffusers import DDIMScheduler

    if half:
        vae, unet, te = (copy.deepcopy(m).half() for m in (vae, unet, te))

    def write(tmp: Path) -> None:
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        for sub in ("vae", "unet"):  # a loaded model remembers where it came from; the folder should not
            config = tmp / sub / "config.json"
            config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                          if k != "_name_or_path"}, indent=2, sort_keys=True) + "\n")
        te.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        shutil.copytree(TOKENIZER, tmp / "tokenizer")
        DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1).save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None],
            "feature_extractor": [None, None], "requires_safety_checker": False}, indent=1))
        (tmp / "training.json").write_text(json.dumps(stats, indent=1))

    write_folder_atomically(out, write, keep=keep)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the model folder to write (replaced whole when it exists; the "
                                                "shipped one is vp2p_world/weights)")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-object-weight", type=float, default=10.0,
                   help="extra VAE loss weight on the object's pixels and rim (0: plain mean)")
    p.add_argument("--unet-steps", type=int, default=4500, help="stage 1: denoising loss, object weighted (0: skip)")
    p.add_argument("--lr", type=float, default=8e-4, help="stage 1's peak learning rate")
    p.add_argument("--object-weight", type=float, default=3.0,
                   help="stage 1's extra loss weight on the object's latents (0: plain mean)")
    p.add_argument("--grounding-steps", type=int, default=600,
                   help="stage 2: unweighted denoising loss plus the grounding loss on the word maps (0: skip)")
    p.add_argument("--grounding-lr", type=float, default=3e-4, help="stage 2's peak learning rate")
    p.add_argument("--grounding-weight", type=float, default=0.02,
                   help="weight of the loss that pulls the words' cross-attention maps onto their regions")
    p.add_argument("--offset-noise", type=float, default=0.1,
                   help="std of a per-image, per-channel constant added to the training noise (0: off). Why: SD's "
                        "schedule leaves 7%% of the clean latent in x_T, so a model trained without it takes the "
                        "image's mean colour, here the background, from the noise, and samples from zero-mean noise "
                        "come out with muddy average backgrounds (background accuracy 0.41 without, 0.75 after 300 "
                        "steps with it)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="0: plain uniform loss weights")
    p.add_argument("--ema", type=float, default=0.999, help="decay of the saved weight average")
    p.add_argument("--vae-tune-steps", type=int, default=600,
                   help="last stage: the VAE fine-tuned on moving clips with its still-world latents held "
                        "(finetune_vae; 0: skip)")
    p.add_argument("--vae-anchor", type=float, default=10.0,
                   help="weight that holds the fine-tuned encoder's still-world latents to the ones the UNet learned")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clips", type=int, default=1500)
    p.add_argument("--moving", type=float, default=MOVING_SHARE,
                   help="share of the pool's clips with random camera, light, growth, occluder and texture (0: the "
                        "still world only, the shipped model). A model that never saw light change or an occluder "
                        "reconstructs them poorly (the VAE's round trip of a light-drift clip: 19 dB; 29 dB trained "
                        "with 0.5), but the one trained with 0.5 edited worse (see MOVING_SHARE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-from", default="", help="a trained VAE folder (skip the VAE stage)")
    p.add_argument("--resume", default="", help="start the UNet/text stages from this model folder (e.g. W.stage1)")
    a = p.parse_args(argv)
    for flag in ("vae_steps", "unet_steps", "grounding_steps", "vae_tune_steps"):
        if getattr(a, flag) < 0:
            p.error(f"--{flag.replace('_', '-')}: expected a step count >= 0, got {getattr(a, flag)}")
    if not a.vae_from and a.vae_steps < 1:
        p.error("--vae-steps: the VAE stage needs at least 1 step (or --vae-from FOLDER to skip it)")
    if a.batch < (2 if a.vae_tune_steps else 1):
        p.error(f"--batch: expected at least {2 if a.vae_tune_steps else 1} (the VAE fine-tune's batch is half still "
                f"and half moving frames), got {a.batch}")
    if a.clips < 1:
        p.error(f"--clips: expected at least 1 clip, got {a.clips}")
    for flag, needs in (("vae_from", ("config.json",)), ("resume", ("unet", "text_encoder"))):
        folder = getattr(a, flag)
        if folder and not Path(folder).is_dir():
            p.error(f"--{flag.replace('_', '-')}: {folder!r} is not a folder")
        missing = [n for n in needs if folder and not (Path(folder) / n).exists()]
        if missing:  # found before the pool is rendered, not by diffusers minutes later
            p.error(f"--{flag.replace('_', '-')}: {folder!r} has no {', '.join(missing)}; expected "
                    f"{'a VAE folder (e.g. vp2p_world/weights/vae)' if flag == 'vae_from' else 'a model folder'}")
    try:  # every stage writes beside --out; the last swaps it in
        check_writable(a.out, "--out", folder=True)
    except VP2PInputError as e:
        p.error(str(e))
    if not (a.unet_steps or a.grounding_steps or a.vae_tune_steps):
        raise SystemExit("--unet-steps, --grounding-steps and --vae-tune-steps are all 0: nothing to train")
    if not (a.unet_steps or a.grounding_steps) and not (a.resume and a.vae_from):
        raise SystemExit("--vae-tune-steps alone needs the model to fine-tune: --vae-from FOLDER --resume FOLDER")
    if a.grounding_steps and not (a.unet_steps or a.resume):
        raise SystemExit("--grounding-steps: stage 2 needs stage 1 (--unet-steps > 0) or --resume FOLDER")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # decaying optimiser moments otherwise slow CPU float maths to a crawl
    from transformers import CLIPTokenizer

    out = Path(a.out)
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=77, local_files_only=True)
    t0 = time.perf_counter()
    pool = command_line_pool(p, a.seed, clips=a.clips, moving=a.moving)
    log.info("rendered %d clips (%.0fs)", a.clips, time.perf_counter() - t0)
    if a.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(a.vae_from, torch_dtype=torch.float32, local_files_only=True).eval()
        stats_file = Path(a.vae_from) / "stats.json"  # a shipped model's vae/ has none (its training.json has them)
        s1 = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        skip_recorded_draws(pool, s1.pop("draws", None), "the VAE stage", a.vae_from)
    else:
        vae, s1 = train_vae(pool, a.vae_steps, a.batch, a.seed, object_weight=a.vae_object_weight)
        stage = out.with_name(out.name + ".vae")  # lets a stopped run resume at the UNet
        draws = {"steps": a.vae_steps, "batch": a.batch}  # what a run resumed from this folder replays
        write_folder_atomically(stage, lambda tmp: (vae.save_pretrained(tmp, safe_serialization=True),
                                                    (tmp / "stats.json").write_text(json.dumps({**s1,
                                                                                               "draws": draws}))))
    stats = {**s1, "vae_seconds": time.perf_counter() - t0}
    if a.resume and a.grounding_steps and not a.unet_steps:  # resumed at stage 2: stage 1's draws and record
        record = Path(a.resume) / "training.json"
        stage1 = json.loads(record.read_text()).get("unet_stage_1") if record.is_file() else None
        if stage1 is not None:
            stats["unet_stage_1"] = stage1
        has_draws = stage1 is not None and "batch" in stage1
        draws = {"steps": stage1["steps"], "batch": stage1["batch"]} if has_draws else None
        skip_recorded_draws(pool, draws, "stage 1", a.resume)
    common = dict(min_snr_gamma=a.min_snr_gamma, ema_decay=a.ema, offset_noise=a.offset_noise)
    models = a.resume
    if a.unet_steps:
        t1 = time.perf_counter()
        unet, te, s = train_unet(pool, vae, tok, a.unet_steps, a.batch, a.seed + 10, lr=a.lr, resume=models,
                                 object_weight=a.object_weight, **common)
        stats["unet_stage_1"] = {**s, "steps": a.unet_steps, "batch": a.batch, "lr": a.lr,
                                 "seconds": time.perf_counter() - t1}
        models = (unet, te)
        if a.grounding_steps:  # lets a stopped run resume at the grounding stage (--resume W.stage1 --unet-steps 0)
            save_folder(out.with_name(out.name + ".stage1"), vae, unet, te, stats, half=False)
    if a.grounding_steps:
        t1 = time.perf_counter()
        unet, te, s = train_unet(pool, vae, tok, a.grounding_steps, a.batch, a.seed + 11, lr=a.grounding_lr,
                                 resume=models, object_weight=0.0, grounding_weight=a.grounding_weight, **common)
        stats["unet_stage_2"] = {**s, "steps": a.grounding_steps, "lr": a.grounding_lr,
                                 "seconds": time.perf_counter() - t1}
    finetune_only = not (a.unet_steps or a.grounding_steps)
    if finetune_only:  # the UNet and the text encoder as they are; the folder's record of its training kept
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        kw = dict(torch_dtype=torch.float32, local_files_only=True)
        te = CLIPTextModel.from_pretrained(Path(a.resume) / "text_encoder", **kw).eval()
        unet = UNet2DConditionModel.from_pretrained(Path(a.resume) / "unet", **kw).eval()
        earlier = Path(a.resume) / "training.json"
        if earlier.exists():
            stats = json.loads(earlier.read_text())
    if a.vae_tune_steps:
        if not finetune_only:  # lets a stopped run resume at the VAE fine-tune (--resume W.stage2, see above)
            save_folder(out.with_name(out.name + ".stage2"), vae, unet, te, stats)
        # the model folder stores the VAE in float16: fine-tune that one, anchored to its latents, so that a whole
        # run and a run resumed from the folder (see the docstring) fine-tune the same weights
        vae = vae.half().float()
        pool.encode_all(vae)
        vae, stats["vae_finetune"] = finetune_vae(vae, pool, a.vae_tune_steps, a.batch, a.seed + 12,
                                                  anchor=a.vae_anchor, object_weight=a.vae_object_weight)
    run = dict(total_seconds=time.perf_counter() - t0, threads=a.threads, args=recorded_args(vars(a)),
               torch=torch.__version__)
    (stats["vae_finetune"] if finetune_only else stats).update(run)
    save_folder(out, vae, unet, te, stats, keep=("tokenizer", "controlnet") if finetune_only else ("tokenizer",))
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
