"""The settings of every stage, each in one home: name, default, allowed range or choices, tooltip and check.

One frozen dataclass per stage (inflation, tuning, inversion, edit plan, sampling, structure guidance,
decoding, compositing). The node layer builds its widgets (defaults, ranges, tooltips) from these fields, the core
functions take the objects, the small world's command-line flags are the field names with dashes, and a
cache key is the object's ``cache_key()``. A field's metadata is its ``Setting``; ``Options.__post_init__``
checks every field against it, so a bad value is refused once, here, with one error text naming it.

Defaults are Stable Diffusion's / the Video-P2P reference's (512 px, 50 DDIM steps, 500 tuning steps, P2P
injection 0.2 / 0.5). The small world uses others for its tiny model; ``vp2p_world.settings`` holds them and
says why.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional, Sequence

from .errors import VP2PInputError

# Stable Diffusion 1.x/2.x's VAE scaling factor: the latents the UNet sees are the VAE's times this.
SD_LATENT_SCALE = 0.18215
# ... and its downsampling: one latent pixel covers 8x8 pixels of the image.
SD_VAE_FACTOR = 8
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32 (a setting that becomes a float32 tensor stays below it)


@dataclass(frozen=True)
class Setting:
    """How one option is shown and checked.

    kind: int | float | bool | str | choice | fraction (of the steps, or a start/end pair) | any (not checked).
    """

    name: str
    kind: str
    default: Any
    tooltip: str
    min: Optional[float] = None
    max: Optional[float] = None
    choices: tuple = ()
    step: Optional[float] = None
    round: Optional[float] = None
    multiline: bool = False
    widget: bool = True  # False: a core option with no node widget (reference constants, internals)

    def check(self, value):
        """The value, converted where harmless (int -> float); VP2PInputError naming the option otherwise."""
        k = self.kind
        if k == "bool":
            if not isinstance(value, bool):
                raise VP2PInputError(f"{self.name}: expected true or false, got {value!r}")
            return value
        if k == "any":
            return value
        if k == "str":
            if not isinstance(value, str):
                raise VP2PInputError(f"{self.name}: expected text, got {type(value).__name__}")
            return value
        if k == "choice":
            if value not in self.choices:
                raise VP2PInputError(f"{self.name}: expected one of {self.choices}, got {value!r}")
            return value
        if k == "fraction":  # a fraction of the steps, or a (start, end) pair of fractions
            pair = (0.0, value) if _is_number(value) else tuple(value) if isinstance(value, (tuple, list)) else None
            if pair is None or len(pair) != 2 or not all(_is_number(v) for v in pair) or \
                    not 0.0 <= pair[0] <= pair[1] <= 1.0:
                raise VP2PInputError(f"{self.name}: expected a fraction of the steps in [0, 1] (or a pair start <= "
                                     f"end), got {value!r}")
            return float(value) if _is_number(value) else (float(pair[0]), float(pair[1]))
        if k == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise VP2PInputError(f"{self.name}: expected a whole number, got {value!r}")
        elif k == "float":
            if not _is_number(value) or not math.isfinite(value):
                raise VP2PInputError(f"{self.name}: expected a number, got {value!r}")
            value = float(value)
        else:
            raise TypeError(f"unknown setting kind {k!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise VP2PInputError(f"{self.name}: expected a value in [{_fmt(self.min, '-inf')}, {_fmt(self.max, 'inf')}], "
                                 f"got {value!r}")
        return value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v, unbounded: str) -> str:
    return unbounded if v is None else f"{v:g}"


def option(kind: str, default, tooltip: str, **spec):
    """A dataclass field whose metadata is its Setting (the name is filled in by ``Options.settings``)."""
    return field(default=default, metadata={"setting": dict(kind=kind, default=default, tooltip=tooltip, **spec)})


@dataclass(frozen=True)
class Options:
    """Base of the per-stage options: checked on construction, hashable into a cache key."""

    def __post_init__(self):
        for s in self.settings(widgets_only=False):
            value = s.check(getattr(self, s.name))
            object.__setattr__(self, s.name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields (override)."""

    @classmethod
    def settings(cls, widgets_only: bool = True) -> list[Setting]:
        out = []
        for f in fields(cls):
            meta = f.metadata.get("setting")
            if meta is None:
                continue
            s = Setting(name=f.name, **meta)
            if s.widget or not widgets_only:
                out.append(s)
        return out

    @classmethod
    def setting(cls, name: str) -> Setting:
        for s in cls.settings(widgets_only=False):
            if s.name == name:
                return s
        raise KeyError(f"{cls.__name__} has no option {name!r}")

    @classmethod
    def from_values(cls, values: dict, **overrides):
        """The options from a dict of node-widget values (other keys are ignored), then ``overrides``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names}, **overrides)

    def replace(self, **changes):
        return replace(self, **changes)

    def cache_key(self) -> dict:
        """The fields that change the result, for a cache key (every field, as plain values)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------------------
# inflation

FRAME_ATTENTION = ("first", "first_prev")
GROUP_NORMS = ("frame", "clip")
WEIGHT_DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class InflationOptions(Options):
    frame_attention: str = option(
        "choice", "first", "What each frame's self-attention looks at: 'first' = the first frame (Video-P2P), "
        "'first_prev' = the first and the previous frame (Tune-A-Video).", choices=FRAME_ATTENTION)
    weight_dtype: str = option(
        "choice", "fp32", "Precision of the video model's weights. fp32 is right for tuning and inversion; "
        "fp16/bf16 halve memory for editing only.", choices=WEIGHT_DTYPES)
    group_norm: str = option(
        "choice", "frame", "Statistics of the ResNet GroupNorms: 'frame' = each frame's own, as the image model was "
        "trained (AnimateDiff's InflatedGroupNorm); 'clip' = pooled over all frames of the clip (Tune-A-Video / "
        "Video-P2P, which normalise the 5-D tensor). Pooled statistics let one frame's content shift every other "
        "frame's: in the small world 'clip' failed recolours that 'frame' makes (BENCHMARKS.md).",
        choices=GROUP_NORMS)


# --------------------------------------------------------------------------------------------------------
# one-shot tuning

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TuneOptions(Options):
    """One-shot tuning (Tune-A-Video / Video-P2P): AdamW on the attention queries and temporal attention."""

    steps: int = option("int", 500, "Tuning steps. The paper uses 500; 300 is also used. 0 skips tuning.",
                         min=0, max=10000, step=1)
    learning_rate: float = option("float", 3e-5, "AdamW learning rate (reference 3e-5).", min=1e-7, max=1e-2,
                                   step=1e-7, round=1e-8)
    seed: int = option("int", 33, "Seed of the noise and timesteps drawn during tuning.", min=0,
                        max=0xFFFFFFFFFFFFFFFF)
    gradient_checkpointing: bool = option(
        "bool", True, "Recompute activations in the backward pass: much less memory, about 30% slower.")
    precision: str = option(
        "choice", "fp32", "Autocast precision of the forward pass while tuning (weights stay as they are). bf16 "
        "roughly halves memory on recent GPUs.", choices=PRECISIONS)
    # the reference's optimiser constants (no widgets)
    betas: tuple = option("any", (0.9, 0.999), "AdamW betas.", widget=False)
    weight_decay: float = option("float", 1e-2, "AdamW weight decay.", min=0.0, widget=False)
    eps: float = option("float", 1e-8, "AdamW epsilon.", min=0.0, widget=False)
    max_grad_norm: float = option("float", 1.0, "Gradient clipping norm.", min=0.0, widget=False)

    def check(self) -> None:
        b = self.betas
        if not (isinstance(b, tuple) and len(b) == 2 and all(_is_number(v) and 0.0 <= v < 1.0 for v in b)):
            raise VP2PInputError(f"betas: expected two numbers in [0, 1), got {b!r}")

    def cache_key(self) -> dict:
        """Every field but gradient_checkpointing, which trades memory for time and gives the same delta."""
        key = super().cache_key()
        key.pop("gradient_checkpointing")
        return key


# --------------------------------------------------------------------------------------------------------
# inversion

INVERSION_MODES = ("null_text", "fast", "negative_prompt")

GUIDANCE = dict(min=1.0, max=30.0, step=0.1, round=0.01)


CHECKPOINTING = ("auto", "on", "off")


@dataclass(frozen=True)
class InversionOptions(Options):
    """DDIM inversion and null-text optimisation (Mokady et al.; the Video-P2P reference's settings)."""

    steps: int = option("int", 50, "DDIM steps; the sampler uses the same number. With SD's 1000 training "
                        "timesteps and its leading spacing the first timestep is 1000 // steps * (steps - 1) + 1: "
                        "981 at 50 steps, 951 at 20, 999 at 500, but 799 at 400 (1000 // 400 rounds down to 2); more "
                        "than 500 would start at the step count itself.", min=1, max=500)
    guidance: float = option("float", 7.5, "Classifier-free guidance the null-text optimisation reproduces; use "
                              "the sampler's.", **GUIDANCE)
    mode: str = option(
        "choice", "null_text", "null_text: exact reconstruction (reference, slowest). fast: no optimisation, the "
        "source branch follows its conditional prediction. negative_prompt: the source prompt serves as the "
        "negative prompt.", choices=INVERSION_MODES)
    inner_steps: int = option("int", 4, "Null-text: at most this many Adam steps per DDIM step (reference 10).",
                              min=1, max=100)
    early_stop: float = option("float", 1e-5, "Null-text: stop a step's optimisation once the loss is below this "
                                "(+2e-5 per step; past 50 steps the same rise spread over them).", min=0.0, max=1.0,
                                step=1e-6, round=1e-8)
    early_stop_ratio: float = option(
        "float", 0.8, "Null-text: also stop a step's optimisation once its loss is below this fraction of the loss the "
        "step started from (the previous step's embedding on this step's latent), before a large step overshoots; "
        "0: off (the reference).", min=0.0, max=1.0, step=0.01)
    lr_scale: float = option(
        "float", 10.0, "Null-text: factor on the reference's learning rate (1e-2 * (1 - i/100); over more than 50 "
        "steps, 1e-2 * (1 - i/(2*steps))). The defaults (10, 4 "
        "inner steps, early_stop_ratio 0.8) reconstructed better than the reference's (1, 10, 0) on every clip "
        "measured, with a third of its backward passes (BENCHMARKS.md, Null-text budget).", min=0.01, max=100.0,
        step=0.01, round=0.01)
    null_text_checkpointing: str = option(
        "choice", "auto", "Null-text: gradient checkpointing in the backward to the embedding, which recomputes the "
        "UNet's activations instead of holding them: the same embeddings, with 1114 instead of 2029 MiB of "
        "activations per frame (SD 1.5 size, 512 px, fp32) for 15-21% more time (measured on a CPU). auto: on where "
        "the device's free memory (in ComfyUI on a CPU: the machine's available memory) is short of the activations "
        "without it, with a margin (vp2p_core.memory).",
        choices=CHECKPOINTING)

    def cache_key(self) -> dict:
        """Every field but null_text_checkpointing, which changes how the embeddings are computed, not them, and
        but the optimisation's settings and its guidance where the mode runs none (fast, negative_prompt: their
        inversion is the same at any guidance, which only the sampler reads)."""
        key = super().cache_key()
        key.pop("null_text_checkpointing")
        if self.mode != "null_text":
            for name in ("inner_steps", "early_stop", "early_stop_ratio", "lr_scale", "guidance"):
                key.pop(name)
        elif self.steps > 50:  # the rate's decay over more steps changed (it turned negative past step 100), and
            # then the early stop's bound (it rose to 1e-2 at 500 steps)
            key["lr_decay"] = "1 - i / (2 * steps)"
            key["stop_bound"] = "early_stop + i * 2e-5 * 50 / steps"
        return key


# --------------------------------------------------------------------------------------------------------
# the edit (Prompt-to-Prompt's attention control)

EDIT_MODES = ("auto", "replace", "refine", "none")
SELF_REPLACE_ON = ("temporal", "frame", "both", "none")
BLEND_REGIONS = ("auto", "outline", "grown")
BLEND_FROM = ("auto", "both", "source")


@dataclass(frozen=True)
class EditOptions(Options):
    """How the target's attention follows the source's: word swap / refinement, reweighting, local blend."""

    edit_mode: str = option(
        "choice", "auto", "replace: word swap (same number of words, or of space-separated pieces: 'man' -> "
        "'Spider-Man'). refine: words added or changed (aligned token by token). none: no attention control. "
        "auto: replace where replace can pair the prompts (either count matches, and no kept word moved: 'a rabbit "
        "is jumping' -> 'an origami rabbit jumping' is refine's), else refine.",
        choices=EDIT_MODES)
    cross_replace: float = option(
        "fraction", 0.2, "Fraction of the steps during which the target's cross-attention maps come from the source "
        "(reference 0.2; more keeps more of the layout).", min=0.0, max=1.0, step=0.01)
    self_replace: float = option(
        "fraction", 0.5, "Fraction of the steps during which the target's self-attention maps come from the source "
        "(reference 0.5; more keeps more of the motion/shape).", min=0.0, max=1.0, step=0.01)
    self_replace_on: str = option(
        "choice", "temporal", "Which self-attention is replaced: temporal (the reference), frame attention (image "
        "P2P's spatial self-attention), both, or none. Try both when the edit moves the object or loses the "
        "layout.", choices=SELF_REPLACE_ON)
    blend_words: str = option(
        "str", "", "Local blend: words of the source prompt whose region may change (e.g. 'rabbit'); the rest of the "
        "clip is kept. Empty: no local blend.")
    blend_target_words: str = option(
        "str", "", "Local blend: the matching words of the target prompt (e.g. 'cat'); empty: the same words as "
        "blend_words. With several target prompts each takes the words it has ('cat dog' for 'a cat ...' and "
        "'a dog ...').")
    reweight_words: str = option(
        "str", "", "Words of the target prompt whose attention is scaled, e.g. 'origami'. Empty: no reweighting. "
        "With several target prompts each scales the words it has.")
    reweight_values: str = option(
        "str", "", "Scale for the reweight words: one value for all (e.g. '2') or one per word ('2, 0.5').")
    mask_threshold: float = option(
        "float", 0.3, "Local blend: attention above this fraction of its maximum is inside the edited region "
        "(reference 0.3).", min=0.01, max=0.99, step=0.01)
    blend_start: float = option("float", 0.2, "Local blend starts after this fraction of the steps (reference 0.2).",
                                 min=0.0, max=1.0, step=0.01)
    frame_replace_max_tokens: int = option(
        "int", 32 * 32, "Frame self-attention is replaced only in layers with at most this many tokens (memory).",
        min=1, widget=False)
    blend_dilation: int = option(
        "int", 0, "Local blend: grow the mask by this many pixels of the image on every side (rounded up to whole "
        "latent pixels: 8 px in SD), so the edit may reach a little past the words' attention; 0: off.",
        min=0, max=256, step=1)
    blend_smoothing: int = option(
        "int", 0, "Local blend: a frame's mask is the majority vote of itself and this many frames on each side, "
        "so a frame the attention missed is filled and a one-frame speck is dropped; 0: off.", min=0, max=8, step=1)
    blend_region: str = option(
        "choice", "auto", "Local blend: the mask's shape. outline: the words' attention, smoothly upsampled, follows "
        "the object's outline (a recolour keeps every pixel around the object). grown: the reference's, grown by one "
        "attention cell on every side (room for a new outline). auto: grown where the target's blend words differ "
        "from the source's (a triangle that replaces a ball), else outline.", choices=BLEND_REGIONS)
    blend_from: str = option(
        "choice", "auto", "Local blend: whose attention to the blend words makes the mask. both (the reference): the "
        "source's and the target's, so a new shape has room where it appears. source: the source's alone, for an "
        "edit that keeps the object in place: where the target branch drifts, its own attention cannot pull the "
        "mask (and the edit) after it. auto: source where the target's blend words are the source's (a recolour), "
        "else both.", choices=BLEND_FROM)

    def check(self) -> None:
        self.reweight()  # refuses unpaired words and values now, not at sampling
        if self.blend_target_words.strip() and not self.blend_words.strip():
            raise VP2PInputError("blend_words: target blend words were given without source blend words")

    def reweight(self) -> dict[str, float]:
        """reweight_words / reweight_values as {word: scale}: one value for all words, or one per word."""
        from .text import parse_words

        ws = parse_words(self.reweight_words)
        vs_text = parse_words(self.reweight_values)
        if not ws:
            if vs_text:
                raise VP2PInputError("reweight_values: values given without reweight_words")
            return {}
        try:
            vs = [float(v) for v in vs_text]
        except ValueError:
            raise VP2PInputError(f"reweight_values: expected numbers such as '2' or '2, 0.5', got "
                                 f"{self.reweight_values!r}") from None
        if not vs:
            raise VP2PInputError(f"reweight_values: give a value for the reweight words {ws} (e.g. '2')")
        if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in vs):  # 'nan' and 'inf' parse as floats
            # (every map NaN), and 1e39 overflowed the float32 scales
            raise VP2PInputError(f"reweight_values: expected finite numbers, got {self.reweight_values!r}")
        if len(vs) == 1:
            vs = vs * len(ws)
        if len(vs) != len(ws):
            raise VP2PInputError(f"reweight_values: {len(vs)} values for {len(ws)} reweight words {ws}; give one "
                                 "value, or one per word")
        return dict(zip(ws, vs))


# --------------------------------------------------------------------------------------------------------
# sampling

@dataclass(frozen=True)
class SamplerOptions(Options):
    """The editing loop: guidance, Video-P2P's decoupled guidance, edit guidance and Gen-1's temporal guidance."""

    guidance: float = option("float", 7.5, "Classifier-free guidance (reference 7.5). With null-text inversion, "
                              "the inversion's guidance reconstructs the source exactly.", **GUIDANCE)
    decoupled_guidance: bool = option(
        "bool", True, "The target branch uses the plain empty-prompt embedding as its unconditional one (Video-P2P's "
        "decoupled guidance); off: it uses the optimised null embeddings too.")
    temporal_guidance: float = option(
        "float", 1.0, "Gen-1's temporal-consistency guidance w_t: 1 = the plain sampler at no extra cost; above 1 "
        "trades edit strength for smoothness across frames, at one extra frame-independent UNet pass per step.",
        min=0.0, max=4.0, step=0.05)
    edit_guidance: float = option(
        "float", 0.0, "Guidance away from the source prompt: each target's prediction gains s x (its conditional "
        "prediction - the same latents' prediction under the source prompt and the same attention control), so "
        "the swapped word (a colour) wins over what the inverted noise still holds of the old one. 0: off (the "
        "reference). On, one more conditional pass per target and step while it acts.",
        min=0.0, max=20.0, step=0.1)
    edit_guidance_steps: float = option(
        "fraction", 0.5, "Fraction of the steps, from the first, during which edit guidance acts (the colours "
        "settle early; later it only pushes the new object's rim into the background).", min=0.0, max=1.0,
        step=0.01)
    reuse_source_trajectory: bool = option(
        "bool", True, "With null-text inversion at the same guidance, the source branch replays the inversion's "
        "trajectory instead of computing it again.", widget=False)


# --------------------------------------------------------------------------------------------------------
# Gen-1 structure guidance

@dataclass(frozen=True)
class StructureOptions(Options):
    structure_blur: float = option(
        "float", 0.0, "Gen-1's structure fidelity t_s: 0 keeps the source's shape exactly, larger values blur the "
        "structure maps so only the coarse layout is kept (sigma = t_s pixels of a 64-pixel-wide copy).",
        min=0.0, max=16.0, step=0.1)
    strength: float = option("float", 1.0, "Scale of the ControlNet's residuals, as in Apply ControlNet (0: off).",
                              min=0.0, max=10.0, step=0.01)
    start_percent: float = option("float", 0.0, "The ControlNet acts from this fraction of the sampling steps on.",
                                   min=0.0, max=1.0, step=0.001)
    end_percent: float = option("float", 1.0, "The ControlNet stops at this fraction of the sampling steps.",
                                 min=0.0, max=1.0, step=0.001)

    def check(self) -> None:
        if self.start_percent > self.end_percent:
            raise VP2PInputError(f"start_percent / end_percent: expected 0 <= start <= end <= 1, got "
                                 f"{self.start_percent}, {self.end_percent}")


# --------------------------------------------------------------------------------------------------------
# the clip's frames

@dataclass(frozen=True)
class FramesOptions(Options):
    """Which frames of a video the clip takes: Tune-A-Video's sampling (n_sample_frames, sample_start_idx,
    sample_frame_rate); ``vp2p_core.frames``."""

    frames: int = option("int", 8, "Frames the clip takes (Tune-A-Video's n_sample_frames; the paper edits 8). "
                         "Clips longer than a context window need the Context Windows node.", min=1, max=4096)
    start_frame: int = option("int", 0, "The video's first frame taken, counted from 0 (sample_start_idx).", min=0,
                              max=1_000_000)
    frame_stride: int = option("int", 1, "Take every n-th frame from start_frame (sample_frame_rate): 2 halves the "
                               "frame rate and doubles the time the clip covers.", min=1, max=1000)


# --------------------------------------------------------------------------------------------------------
# decoding

@dataclass(frozen=True)
class DecodeOptions(Options):
    frames_per_chunk: int = option(
        "int", 1, "Frames through the VAE at once. 1 keeps memory lowest: at image size the VAE's activations are the "
        "largest tensors of an edit (512 px, tiny model, whole CPU edit: 839 MiB peak encoding 8 and decoding 4 "
        "frames at once, 686 one at a time; BENCHMARKS.md); more can be faster on a GPU with memory to spare.",
        min=1, max=256)


@dataclass(frozen=True)
class MapsOptions(Options):
    """How Attention Maps shows an edit's per-word cross-attention: a view, nothing here changes the edit."""

    frame: int = option("int", -1, "Frame to show; -1 averages all frames.", min=-1, max=4096)
    cell_size: int = option("int", 96, "Height of each map in pixels (its width follows the clip's aspect).",
                            min=16, max=512, step=8)


# --------------------------------------------------------------------------------------------------------
# light

@dataclass(frozen=True)
class LightOptions(Options):
    """The clip edited as if evenly lit, its light put back on the decoded frames (``vp2p_core.light``)."""

    normalise_light: bool = option(
        "bool", False, "Take a change of light over the clip (exposure, white balance: an RGB gain per frame, "
        "measured pixel by pixel between frames) out of the frames before they are encoded, and put "
        "it back on the decoded frames. One-shot tuning on a clip whose light drifts or flickers can garble the "
        "edit. Light that differs across the frame (a shadow) stays in the clip.")


# --------------------------------------------------------------------------------------------------------
# compositing

@dataclass(frozen=True)
class CompositeOptions(Options):
    """The decoded edit pasted over the source frames through the local-blend mask (``vp2p_core.composite``)."""

    composite: bool = option(
        "bool", False, "Paste the decoded edit over the source frames through the local-blend mask, so every pixel "
        "outside the (dilated) mask is the source's own pixel rather than its VAE round trip. Needs local blend.")
    mask_dilation: int = option(
        "int", 16, "Grow the blend mask by this many pixels of the image on every side before compositing: room "
        "for the feather and for an edit a little larger than the mask.", min=0, max=512, step=1)
    feather: int = option(
        "int", 8, "Soften the composite's edge over this many pixels inside the dilated mask's border (a linear "
        "ramp); pixels outside the dilated mask stay the source's exactly. At most mask_dilation keeps the whole "
        "undilated mask the edit's. 0: a hard edge.", min=0, max=256, step=1)
    recolour_margin: bool = option(
        "bool", True, "Grow and feather a recolour's mask too. A recolour's mask (an outline blend: the same blend "
        "words in both prompts) is the very region the sampler blended in, so past it the decoded edit is only the "
        "VAE's spill of the new colour; off pastes it with a hard edge, best once refine_radius snaps it to the "
        "object's own edges. A shape swap's mask is always grown and feathered: its new outline may pass it.")
    change_threshold: float = option(
        "float", 0.0, "Inside the mask, keep the source's pixel where the decoded edit hardly changed it: a pixel "
        "whose largest channel difference from the source frame (0..1) is below half this value is the source's, "
        "above 1.5x it is the edit's, a linear ramp between. Removes the VAE's halo and lost texture around an edited "
        "object. Judged also against the colour around the mask (within this value: like the background): where the "
        "edit took the object away (the source's pixel unlike it, the edit's like it), the edit's pixel, so a shape "
        "swap's old corners stay gone; where both are like it, the source's, so the new colour's faint rim goes. "
        "Where the mask is whole, the composite stays within 9/16 of this value of the decoded edit (twice the "
        "value on background in both). On a dim frame (99th percentile below half of white) the value scales with "
        "the frame's brightness. Needs the source frames (Blend Mask: source_images). 0: off (the whole mask is the "
        "edit's).",
        min=0.0, max=1.0, step=0.01)
    refine_radius: int = option(
        "int", 0, "Snap the blend mask to the edges of the frames before dilating it: a guided filter (He et al.) of "
        "the mask, upsampled from the attention grid, with the source frame and the decoded edit as its guide (a "
        "recolour's: the source frame alone, since it keeps the object's outline and the edit may sag past it), "
        "over windows of this radius in pixels of the image; where it keeps more than half, the mask is on. At "
        "least a latent pixel (8 px in SD; the small world uses 8, two of its 4-px latent pixels) lets the mask's "
        "blocky edge move onto the object's; the cost grows with the radius squared. Needs the source frames (Blend "
        "Mask: source_images). 0: off (the attention grid's blocks).",
        min=0, max=64, step=1)
    occluder_threshold: float = option(
        "float", 0.0, "Inside the mask, keep the source's pixels that are neither the object's colour nor the "
        "background's around it, nor a mix of the two (its rim): something in front of the object, such as a post it "
        "passes behind, which the edit would paint over. The colour distance (RGB, frames in 0..1) beyond which a "
        "pixel counts as in front; the object's colour is the median of the masked pixels unlike the background, so "
        "on an object of several colours the others count as in front too (fine for a recolour, not for a shape "
        "swap). Needs the source frames (Blend Mask: source_images). 0: off.", min=0.0, max=1.0, step=0.01)


# --------------------------------------------------------------------------------------------------------
# context windows (clips of any length)

# ComfyUI's names (comfy/context_windows.py, node ContextWindowsManual), so a ComfyUI user already knows them.
CONTEXT_SCHEDULES = ("standard_static", "standard_uniform", "looped_uniform", "batched")
FUSE_METHODS = ("pyramid", "relative", "flat", "overlap-linear")


@dataclass(frozen=True)
class ContextOptions(Options):
    """Every stage that runs the UNet sees the clip through windows of ``context_length`` frames
    (``vp2p_core.context``); a window as long as the clip or longer is the whole clip, as without windows."""

    context_length: int = option("int", 16, "Frames the UNet sees at once. A clip this long or shorter is one "
                                 "window (the whole clip).", min=1, max=4096)
    context_overlap: int = option("int", 4, "Frames two neighbouring windows share; their predictions are blended "
                                  "there. Must be smaller than context_length.", min=0, max=4095)
    context_schedule: str = option(
        "choice", "standard_static", "How windows are laid over the clip (ComfyUI's names): standard_static, the "
        "same windows every step; standard_uniform / looped_uniform, windows that shift from step to step (ComfyUI "
        "only); batched, no overlap.", choices=CONTEXT_SCHEDULES)
    context_stride: int = option("int", 1, "Uniform schedules: also windows of every 2nd, 4th, ... frame up to "
                                 "this stride.", min=1, max=16)
    closed_loop: bool = option("bool", False, "looped_uniform: windows also wrap from the last frame to the first.")
    fuse_method: str = option(
        "choice", "pyramid", "Weights of a window's frames where windows overlap: pyramid (highest in the middle), "
        "relative, flat, overlap-linear (a linear ramp over the overlap only).", choices=FUSE_METHODS)

    def check(self) -> None:
        if self.context_overlap >= self.context_length:
            raise VP2PInputError(f"context_overlap: expected fewer frames than context_length "
                                 f"({self.context_length}), got {self.context_overlap}")

    def cache_key(self) -> dict:
        """Every field, with the ones this schedule ignores at their defaults: context_stride outside the uniform
        schedules, closed_loop outside looped_uniform (toggling them recomputed a cached tuning for nothing)."""
        key = super().cache_key()
        if self.context_schedule not in ("standard_uniform", "looped_uniform"):
            key["context_stride"] = ContextOptions.context_stride
        if self.context_schedule != "looped_uniform":
            key["closed_loop"] = ContextOptions.closed_loop
        return key


STAGES: Sequence[type] = (InflationOptions, TuneOptions, InversionOptions, EditOptions, SamplerOptions,
                          StructureOptions, DecodeOptions, MapsOptions, CompositeOptions, ContextOptions, FramesOptions)
