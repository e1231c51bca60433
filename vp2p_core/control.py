"""Attention control (Prompt-to-Prompt for video): the edit plan and the controller that applies it.

``EditPlan`` is what the user chose (prompts, mode, fractions, words), resolved to token indices once;
``AttentionController`` applies it during one sampling run: it is read by the attention processors
(``reads_cross`` / ``cross`` / ``self_replace_active``) and blends latents at the end of every step.
The controlled batch is the conditional rows [source, target_1..n]; unconditional rows are untouched,
as in the reference. While edit guidance acts (``SamplerOptions.edit_guidance``), n contrast rows follow the
targets: the source prompt at each target's latents, under the same control as their target (the source's maps
and self-attention where the target takes them), so that target minus contrast is the swapped words' effect alone.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .composite import dilate_mask, latent_pixels, smooth_mask_frames
from .context import is_whole_clip
from .errors import VP2PInputError
from .options import SD_VAE_FACTOR, EditOptions
from .seq_aligner import refinement_mapper, replacement_mapper
from .text import (MAX_TOKENS, TokenizerLike, check_prompt_length, parse_words, prompt_words,
                   word_token_indices, words_token_indices)

log = logging.getLogger(__name__)


@dataclass
class BlendSpec:
    """LocalBlend: token indices of the blend words in the source and in each target prompt."""

    source_tokens: list[int]
    target_tokens: list[list[int]]
    threshold: float
    start: float
    dilation: int = 0  # pixels of the image
    smoothing: int = 0  # frames on each side of the majority vote over time
    region: str = "grown"  # outline | grown (EditOptions.blend_region, "auto" resolved)
    source_only: bool = False  # the mask from the source's blend words alone (EditOptions.blend_from, resolved)


@dataclass
class EditPlan:
    """A resolved edit: everything the sampler needs but the model and the inversion."""

    source_prompt: str
    target_prompts: list[str]
    mode: str  # replace | refine | none
    cross_replace: tuple[float, float]
    self_replace: tuple[float, float]
    self_replace_on: str
    frame_replace_max_tokens: int
    mapper: Optional[torch.Tensor] = None  # replace: [n,77,77]; refine: [n,77] long
    refine_alphas: Optional[torch.Tensor] = None  # refine: [n,77]
    equalizer: Optional[torch.Tensor] = None  # [n,77]
    cross_replace_words: list[tuple[list[list[int]], tuple[float, float]]] = field(default_factory=list)
    blend: Optional[BlendSpec] = None
    store_maps: bool = True
    # text embeddings, filled by whoever owns the text encoder
    source_embedding: Optional[torch.Tensor] = None  # [1,77,D]
    target_embeddings: Optional[torch.Tensor] = None  # [n,77,D]
    empty_embedding: Optional[torch.Tensor] = None  # [1,77,D]

    @property
    def num_targets(self) -> int:
        return len(self.target_prompts)

    def cross_alpha(self, num_steps: int) -> torch.Tensor:
        """[num_steps+1, n, 77]: 1 where target tokens take the source's maps (the reference's alpha_time_words)."""
        alpha = torch.zeros(num_steps + 1, self.num_targets, MAX_TOKENS)
        if self.mode == "none":
            return alpha
        s, e = (int(v * (num_steps + 1)) for v in self.cross_replace)
        alpha[s:e] = 1
        for per_target, (ws, we) in self.cross_replace_words:
            s, e = int(ws * (num_steps + 1)), int(we * (num_steps + 1))
            for t, idx in enumerate(per_target):
                if idx:
                    alpha[:, t, idx] = 0
                    alpha[s:e, t, idx] = 1
        return alpha


def token_grid(latent_hw: Sequence[int], tokens: int) -> tuple[int, int]:
    """The grid (height, width) of an attention layer with ``tokens`` image tokens on a latent of ``latent_hw``: the
    UNet's downsamplers (3x3 convolutions of stride 2, padding 1) halve a size rounding up, so a 36-row latent (288
    px in SD) has grids of 36, 18, 9 and 5 rows."""
    h, w = latent_hw
    while h * w > tokens:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != tokens:
        raise RuntimeError(f"cannot place {tokens} attention tokens on a {latent_hw[0]}x{latent_hw[1]} latent's grids")
    return h, w


def at_source_tokens(plan: EditPlan, values: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Per-target-token ``values`` [..., n, 77] moved to the source's tokens through the plan's alignment, for the
    contrast rows (which hold the source's words). replace: each source token takes the mean over the target tokens
    it maps to; refine: each aligned target token's value goes to its source token; ``fill`` (same shape) stays
    where no target token is aligned (words the target dropped, punctuation only the source has); none: unchanged
    (no control)."""
    if plan.mode == "replace":
        m = plan.mapper.to(values)  # [n, source 77, target 77]
        total = m.sum(-1)  # [n, 77]: 0 where a source token maps to no target token (punctuation the target lacks)
        mean = torch.einsum("bwk,...bk->...bw", m, values) / total.clamp_min(1e-12)
        return torch.where(total > 0, mean, fill)
    if plan.mode == "refine":
        out = fill.clone()
        for b in range(plan.num_targets):
            aligned = plan.refine_alphas[b].bool()
            out[..., b, plan.mapper[b][aligned]] = values[..., b, aligned]
        return out
    return values


def fraction_pair(v) -> tuple[float, float]:
    """A fraction of the steps (0..v) or a (start, end) pair, as a "fraction" option checks it."""
    return (0.0, float(v)) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))


def _words_shifted(source: Sequence[str], target: Sequence[str]) -> bool:
    """Whether more of the words match in order (their longest common subsequence) than in place: some kept word
    moved, which only an insertion beside a deletion does."""
    in_place = sum(a == b for a, b in zip(source, target))
    longest = [0] * (len(target) + 1)
    for a in source:
        diagonal = 0
        for j, b in enumerate(target):
            diagonal, longest[j + 1] = longest[j + 1], diagonal + 1 if a == b else max(longest[j + 1], longest[j])
    return longest[-1] > in_place


def _is_word_swap(source: str, target: str, tokenizer: TokenizerLike) -> bool:
    """``auto``'s test for replace: the same number of words, or the same space-separated pieces but where a piece
    becomes one of another number of words (the reference's man -> Spider-Man config). Pieces pair by position,
    so a piece that changes into another single word beside it means a word added and one dropped ('a man is
    driving a car' -> 'Spider-Man is driving a red car'): refine aligns that, replace would shift every word.
    So would it with the same number of words where one is added and another dropped ('a rabbit is jumping' -> 'a
    origami rabbit jumping' paired rabbit with origami and is with rabbit): words that keep their order but not their
    places are refine's."""
    words_s, words_t = prompt_words(source, tokenizer), prompt_words(target, tokenizer)
    if len(words_s) == len(words_t):
        return not _words_shifted([w.lower() for w in words_s], [w.lower() for w in words_t])
    pieces_s, pieces_t = source.split(), target.split()
    return len(pieces_s) == len(pieces_t) and all(
        a.lower() == b.lower() or len(prompt_words(a, tokenizer)) != len(prompt_words(b, tokenizer))
        for a, b in zip(pieces_s, pieces_t))


def build_edit_plan(tokenizer: TokenizerLike, source_prompt: str, target_prompts: str | Sequence[str],
                    options: EditOptions = EditOptions(), cross_replace_words: Optional[dict] = None) -> EditPlan:
    """Resolve prompts and options into token-level tensors; bad input raises VP2PInputError naming it.

    ``target_prompts``: one prompt, several, or a text with one prompt per line.

    ``cross_replace_words`` ({target word: fraction or (start, end)}) gives single words their own
    cross-attention injection window (the reference's dict form of ``cross_replace_steps``)."""
    lines = target_prompts.splitlines() if isinstance(target_prompts, str) else list(target_prompts)
    targets = [t.strip() for t in lines if t.strip()]  # one target per line; blank lines are not targets
    if not targets:
        raise VP2PInputError("target_prompts: expected at least one target prompt (one per line)")
    source_prompt = source_prompt.strip()
    if not source_prompt.strip():
        raise VP2PInputError("source_prompt: expected a non-empty prompt describing the clip")
    check_prompt_length(tokenizer, source_prompt, "source_prompt")
    for t in targets:
        check_prompt_length(tokenizer, t, "target_prompts")
    mode = options.edit_mode
    if mode == "auto":
        swaps = [_is_word_swap(source_prompt, t, tokenizer) for t in targets]
        mode = "replace" if all(swaps) else "refine"
        if any(swaps) and not all(swaps):  # one mode for every target: a word swap beside them is refined too
            log.warning("edit_mode auto: refine for every target prompt, since %s cannot pair word for word with "
                        "the source; the word swaps among them (%s) are refined too, and edit differently than "
                        "alone (edit them in a run of their own for replace)",
                        ", ".join(repr(t) for t, w in zip(targets, swaps) if not w),
                        ", ".join(repr(t) for t, w in zip(targets, swaps) if w))
    plan = EditPlan(source_prompt=source_prompt, target_prompts=targets, mode=mode,
                    cross_replace=fraction_pair(options.cross_replace),
                    self_replace=fraction_pair(options.self_replace), self_replace_on=options.self_replace_on,
                    frame_replace_max_tokens=options.frame_replace_max_tokens)
    if mode == "replace":
        plan.mapper = torch.stack([replacement_mapper(source_prompt, t, tokenizer) for t in targets])
    elif mode == "refine":
        pairs = [refinement_mapper(source_prompt, t, tokenizer) for t in targets]
        plan.mapper = torch.stack([p[0] for p in pairs])
        plan.refine_alphas = torch.stack([p[1] for p in pairs])
    fraction = EditOptions.setting("cross_replace")  # the same check, under the word's name
    for word, frac in (cross_replace_words or {}).items():
        idx = [word_token_indices(t, word, tokenizer) for t in targets]
        if not any(idx):
            raise VP2PInputError(f"cross_replace_words: the word {word!r} is in no target prompt {targets!r}")
        pair = fraction_pair(dataclasses.replace(fraction, name=f"cross_replace_words[{word!r}]").check(frac))
        plan.cross_replace_words.append((idx, pair))
    reweight = options.reweight()
    if reweight:
        if mode == "none":
            raise VP2PInputError("reweight_words: reweighting needs attention control; edit_mode 'none' has none")
        eq = torch.ones(len(targets), MAX_TOKENS)
        present = targets_with_words(targets, list(reweight), tokenizer, "reweight_words", every_target=False)
        for i, (t, words) in enumerate(zip(targets, present)):
            for word in words:
                eq[i, words_token_indices(t, [word], tokenizer, "reweight_words")] = float(reweight[word])
        plan.equalizer = eq
    src_words = parse_words(options.blend_words)
    if src_words:
        tgt_words = parse_words(options.blend_target_words)
        tgt_what = "blend_target_words (target prompt)" if tgt_words else "blend_words (target prompt)"
        tgt_words = tgt_words or src_words
        same = [w.lower() for w in tgt_words] == [w.lower() for w in src_words]
        source_tokens = words_token_indices(source_prompt, src_words, tokenizer, "blend_words (source prompt)")
        shares = targets_with_words(targets, tgt_words, tokenizer, tgt_what)
        own = [[w.lower() for w in share] == [w.lower() for w in src_words] for share in shares]
        auto = [name for name in ("blend_region", "blend_from") if getattr(options, name) == "auto"]
        if auto and not same and len(set(own)) > 1:  # resolved once for all targets, from the whole word lists
            log.warning("%s auto: resolved once for every target prompt, from the blend word lists, as for a new "
                        "shape (a grown region from the source's and the target's words); %s keep the source's "
                        "blend words (a recolour) and get it too, where alone they would get the source's outline: "
                        "edit them in a run of their own, or set the options", " and ".join(auto),
                        ", ".join(repr(t) for t, o in zip(targets, own) if o))
        region = options.blend_region
        if region == "auto":  # a new shape needs room beyond the old outline; a recolour does not
            region = "outline" if same else "grown"
        source_only = options.blend_from == "source" or (options.blend_from == "auto" and same)
        plan.blend = BlendSpec(
            source_tokens=source_tokens,
            target_tokens=[words_token_indices(t, words, tokenizer, tgt_what) for t, words in zip(targets, shares)],
            threshold=options.mask_threshold, start=options.blend_start, dilation=options.blend_dilation,
            smoothing=options.blend_smoothing, region=region, source_only=source_only)
    return plan


def targets_with_words(targets: Sequence[str], words: Sequence[str], tokenizer: TokenizerLike, what: str,
                       every_target: bool = True) -> list[list[str]]:
    """Each target prompt's share of ``words``. One target: all of them (one it lacks is an error naming it).
    Several: each target takes the words it has, as the reference's per-prompt word lists ('cat dog' for the
    targets 'a cat ...' and 'a dog ...'); a word in no target is an error, and so is a target with none of the
    words where ``every_target`` (a blend region needs words in every target; reweighting may leave one alone)."""
    if len(targets) == 1:
        words_token_indices(targets[0], words, tokenizer, what)  # raises for a word the prompt lacks
        return [list(words)]
    present = [[w for w in words if word_token_indices(t, w, tokenizer)] for t in targets]
    missing = [w for w in words if not any(w in p for p in present)]
    if missing:
        raise VP2PInputError(f"{what}: the word {missing[0]!r} is in no target prompt {list(targets)!r}")
    if every_target:
        for t, p in zip(targets, present):
            if not p:
                raise VP2PInputError(f"{what}: none of the words {list(words)!r} is in the target prompt {t!r}")
    return present


def blend_layer_names(unet, layer_names: Sequence[str]) -> list[str]:
    """Cross-attention layers at the coarsest down/up resolution (16x16 at 512 px in SD), for LocalBlend.

    Every SD down block but the last halves the resolution, so down_blocks.k is at 1/2^k and
    up_blocks.k at 1/2^(n-1-k); the mid block is left out, as in the reference.
    """
    n = len(unet.down_blocks)

    def level(name: str) -> Optional[int]:
        parts = name.split(".")
        if parts[0] == "down_blocks":
            return int(parts[1])
        if parts[0] == "up_blocks":
            return n - 1 - int(parts[1])
        return None

    levels = {name: level(name) for name in layer_names}
    coarsest = max(v for v in levels.values() if v is not None)
    return [name for name, v in levels.items() if v == coarsest]


class AttentionController:
    """Applies an EditPlan during one sampling run of ``num_steps`` steps."""

    def __init__(self, plan: EditPlan, num_steps: int, num_frames: int, latent_hw: tuple[int, int],
                 blend_layers: Sequence[str], device=None, vae_factor: int = SD_VAE_FACTOR):
        """``vae_factor``: image pixels per latent pixel (the VAE's downsampling), for the blend mask's dilation."""
        self.plan, self.num_steps, self.num_frames = plan, num_steps, num_frames
        self.latent_hw = latent_hw
        self.vae_factor = int(vae_factor)
        self.source_index = 0
        self.num_targets = plan.num_targets
        self.contrast = False  # this step's batch has the contrast rows (set by the sampler)
        self.cur_step = 0
        dev = device or torch.device("cpu")
        alpha = plan.cross_alpha(num_steps)
        self.alpha = alpha.to(dev)
        # per step, on the host: asked twice per cross-attention layer, and a device tensor would sync each time
        self.cross_steps = [bool(a.any()) for a in alpha]
        self.mapper = plan.mapper.to(dev) if plan.mapper is not None else None
        self.refine_alphas = plan.refine_alphas.to(dev) if plan.refine_alphas is not None else None
        self.equalizer = plan.equalizer.to(dev) if plan.equalizer is not None else None
        # the contrast rows' control: the targets' per-token injection and reweighting, at the source's tokens
        window = dataclasses.replace(plan, cross_replace_words=[]).cross_alpha(num_steps)  # every word alike
        self.contrast_alpha = at_source_tokens(plan, alpha, fill=window).to(dev)
        self.contrast_equalizer = None if plan.equalizer is None else \
            at_source_tokens(plan, plan.equalizer, fill=torch.ones_like(plan.equalizer)).to(dev)
        self.blend_layers = set(blend_layers)
        self.reads_blend = plan.blend is not None or plan.store_maps
        self.map_sum: Optional[torch.Tensor] = None  # [1+n, F, N, 77] summed over steps and blend layers
        self.map_count = 0
        self.last_mask: Optional[torch.Tensor] = None  # [n, F, 1, h, w] the last step's blend (None before it)
        self._windowed = False  # this step sees the clip through context windows (vp2p_core.context)
        self._window: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (clip frames, normalised weights)
        self._first_window = True
        s, e = plan.self_replace
        self.self_steps = (int(num_steps * s), int(num_steps * e))
        if plan.blend is not None:
            words = torch.zeros(plan.num_targets + 1, MAX_TOKENS)
            words[0, plan.blend.source_tokens] = 1
            for t, idx in enumerate(plan.blend.target_tokens):
                words[t + 1, idx] = 1
            self.blend_words = words.to(dev)
            self.blend_start = int(plan.blend.start * num_steps)

    # -- read by the processors ---------------------------------------------------------------
    @property
    def controlled_clips(self) -> int:
        """Rows of the batch under control: the source, the targets, and the contrast rows while they run."""
        return 1 + self.num_targets * (2 if self.contrast else 1)

    @property
    def target_indices(self) -> list[int]:
        """Rows that take the source's self-attention: the targets and the contrast rows."""
        return list(range(1, self.controlled_clips))

    def _cross_active(self) -> bool:
        return self.mode_controls and self.cross_steps[self.cur_step]

    @property
    def mode_controls(self) -> bool:
        return self.plan.mode in ("replace", "refine")

    def reads_cross(self, name: str, tokens: int) -> bool:
        return self._cross_active() or (self.reads_blend and name in self.blend_layers)

    def self_replace_active(self, kind: str, tokens: int) -> bool:
        on = self.plan.self_replace_on
        if on == "none" or not self.mode_controls or not (self.self_steps[0] <= self.cur_step < self.self_steps[1]):
            return False
        if kind == "temporal":
            return on in ("temporal", "both")
        return on in ("frame", "both") and tokens <= self.plan.frame_replace_max_tokens

    def cross(self, probs: torch.Tensor, name: str) -> torch.Tensor:
        """probs [1+n, F, heads, N, 77] of the conditional rows (F: the window's rows; [1+2n, ...] with the contrast
        rows); returns the edited maps, written over ``probs`` (the processor's own, read by nothing else: a copy
        of them was the size of every controlled row's maps, about 2.7 GB per 64x64 layer for 11 clips of 24 frames
        at SD 1.5's 512 px)."""
        n = self.num_targets
        if self.reads_blend and name in self.blend_layers:
            m = probs[:1 + n].mean(dim=2).detach()
            if self._window is None:
                self.map_sum = m if self.map_sum is None else self.map_sum + m
                self.map_count += 1
            else:  # each window adds its frames' maps at their fuse weights: a frame's weights sum to 1
                frames, weights = self._window
                if self.map_sum is None:
                    self.map_sum = torch.zeros((m.shape[0], self.num_frames, *m.shape[2:]), device=m.device,
                                               dtype=m.dtype)
                self.map_sum.index_add_(1, frames, m * weights.to(m.dtype)[None, :, None, None])
                self.map_count += int(self._first_window)
        if not self._cross_active():
            return probs
        base = probs[0]
        if self.plan.mode == "replace":
            new = torch.einsum("fhpw,bwn->bfhpn", base, self.mapper)
        else:
            new = base[..., self.mapper].permute(3, 0, 1, 2, 4)  # [n, F, heads, N, 77]
            a = self.refine_alphas[:, None, None, None, :]
            new = new * a + probs[1:1 + n] * (1 - a)
        if self.equalizer is not None:
            new = new * self.equalizer[:, None, None, None, :]
        alpha = self.alpha[self.cur_step][:, None, None, None, :]
        # each right-hand side is whole before it is written; the source's row 0 (base) is never written
        probs[1:1 + n] = new * alpha + probs[1:1 + n] * (1 - alpha)
        if self.contrast:  # the source's own words under the target's control, at the source's tokens: its maps
            a = self.contrast_alpha[self.cur_step][:, None, None, None, :]  # where the target takes the source's,
            contrast = base * a + probs[1 + n:] * (1 - a)  # and the target's reweighting
            eq = self.contrast_equalizer
            probs[1 + n:] = contrast if eq is None else contrast * eq[:, None, None, None, :]
        return probs

    # -- called by the sampler ------------------------------------------------------------------
    def set_windows(self, windows) -> None:
        """The context windows of the coming step (vp2p_core.context.Window list)."""
        self._windowed = not is_whole_clip(windows, self.num_frames)
        self._window, self._first_window = None, True

    def enter_window(self, window, weights: torch.Tensor) -> None:
        """The UNet call that follows sees ``window`` (its rows' normalised fuse weights ``weights``)."""
        if not self._windowed:
            return
        if self._window is not None:
            self._first_window = False
        self._window = (window.index(weights.device), weights)

    def leave_windows(self) -> None:
        self._window = None

    def end_step(self, latents: torch.Tensor) -> torch.Tensor:
        """LocalBlend after a DDIM step; latents [1+n, F, C, h, w]. Advances the step counter."""
        step = self.cur_step
        self.cur_step += 1
        blend = self.plan.blend
        if blend is None or step < self.blend_start or self.map_sum is None:
            return latents
        mask = self.blend_mask(blend.threshold, dilation=blend.dilation, smoothing=blend.smoothing,
                               region=blend.region, source_only=blend.source_only)
        self.last_mask = mask[1:]
        src = latents[:1]
        return src + mask.to(latents.dtype) * (latents - src)  # the latents' dtype whatever the mask's

    @property
    def edit_mask_is_blend_region(self) -> bool:
        """Whether ``edit_mask`` is the very region the last step blended in (an outline blend: a recolour), so
        that outside it the targets' latents are the source's; a grown blend exports the tighter outlines instead,
        which the new shape may pass (``EditResult.blend_outline``)."""
        return self.plan.blend is not None and self.plan.blend.region != "grown"

    def edit_mask(self) -> Optional[torch.Tensor]:
        """The mask an edit exports ([n, F, 1, h, w], None where no blend ran): where the clip was edited, for the
        composite and for ComfyUI. The last step's blend, except that a ``grown`` blend is exported as its outline
        (the union of the source's and the target's blend-word outlines, same threshold, smoothing and dilation).

        Why: the grown blend gives a new shape room while it forms (a cell around the object's box on every side);
        once sampling is over, the new shape is where the target's words attend, so the pair of outlines says where
        the edit is, and the composite keeps the source's pixels in the rest of the box (the small world's six
        shape swaps, fast inversion: the composite's mask against the true old + new object region IoU 0.34 ->
        0.85, worst frame 0.29 -> 0.80, background 31.6 -> 33.3 dB, accuracy 0.83 -> 0.85; BENCHMARKS.md, sixth
        run)."""
        blend = self.plan.blend
        if self.last_mask is None or self.edit_mask_is_blend_region:
            return self.last_mask
        return self.blend_mask(blend.threshold, dilation=blend.dilation, smoothing=blend.smoothing,
                               region="outline", source_only=False)[1:]

    def blend_mask(self, threshold: float, dilation: int = 0, smoothing: int = 0,
                   region: str = "grown", source_only: bool = False) -> torch.Tensor:
        """[1+n, F, 1, h, w] float: union of the source-word and target-word masks (row 0: source's own; with
        ``source_only`` every row is the source's), then the majority vote over ``smoothing`` frames on each side,
        then grown by ``dilation`` image pixels (whole latent pixels, rounded up).

        ``source_only`` departs from the reference (which always takes the union) for edits that keep the object
        in place: when a recolour's target branch drifts, the target's own attention follows the drift, and the
        union let the edit paint the drifted object (13 8-frame recolours and reweights, nine of the benchmark's and
        four held out, fast inversion: accuracy 0.64 -> 0.78, mask IoU 0.58 -> 0.69, warp error 0.043 -> 0.035).

        The blend words' maps are at the coarsest cross-attention resolution (a cell is 4 latent pixels at 512 px
        in SD, 2 in the small world). ``grown`` (the reference's): max-pooled over 3x3 cells, then each cell a
        block of latent pixels: the object's box plus a cell on every side, room for a new outline. ``outline``:
        bilinearly upsampled and thresholded on the latent grid: the object's own outline, which is what a
        recolour changes (against ``grown``, mask IoU 0.23 -> 0.56 on the small world's benchmark recolours;
        a tight mask on a shape swap cut the new shape to the old outline)."""
        c, f, n, _ = self.map_sum.shape
        hb, wb = self._map_hw(n)
        maps = (self.map_sum * self.blend_words[:, None, None, :]).sum(-1).view(c, f, hb, wb)
        if region == "outline":
            mask = F.interpolate(maps, size=self.latent_hw, mode="bilinear", align_corners=False)
        else:
            maps = F.max_pool2d(maps, (3, 3), (1, 1), padding=(1, 1))
            mask = F.interpolate(maps, size=self.latent_hw)
        mask = mask / mask.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        mask = mask.gt(threshold)
        # a triangle that replaces a ball needs both regions; a ball that changes colour stays in the source's
        mask = mask[:1].expand_as(mask) if source_only else mask[:1] | mask
        mask = mask.unsqueeze(2).float()
        if smoothing:
            mask = smooth_mask_frames(mask, smoothing, frame_dim=1)
        if dilation:
            mask = dilate_mask(mask, latent_pixels(dilation, self.vae_factor))
        return mask

    def _map_hw(self, n: int) -> tuple[int, int]:
        return token_grid(self.latent_hw, n)

    def attention_maps(self) -> Optional[torch.Tensor]:
        """Average cross-attention maps at the blend resolution: [1+n, F, hb, wb, 77]."""
        if self.map_sum is None:
            return None
        c, f, n, t = self.map_sum.shape
        hb, wb = self._map_hw(n)
        return (self.map_sum / self.map_count).view(c, f, hb, wb, t)
