"""The small world's settings: where its tiny model needs other defaults than Stable Diffusion's, and why.

Every option keeps its default from ``vp2p_core.options`` (SD's / the Video-P2P reference's) unless it is
listed in ``WORLD_DEFAULTS``. The demo, the benchmarks and the sweep build their options here and their
command-line flags from the same fields (``--cross-replace`` is ``EditOptions.cross_replace``), so a
setting is spelled the same in the node widget, the core and every command.
"""
from __future__ import annotations

import argparse
from typing import Iterable, Optional

from vp2p_core.errors import VP2PInputError
from vp2p_core.options import (CompositeOptions, EditOptions, FramesOptions, InversionOptions, LightOptions, Options,
                               SamplerOptions, TuneOptions)

WORLD_DEFAULTS: dict[type, dict] = {
    # A 2-core CPU runs the whole demo in well under a minute with 60 tuning steps and 20 DDIM steps (the paper:
    # 500 and 50); the 16-MB model fits in memory without gradient checkpointing, which would cost ~30% time.
    # Every recorded run of the edit benchmark passed 20 steps (the demo ran 25 until it took them from here).
    TuneOptions: dict(steps=60, gradient_checkpointing=False),
    InversionOptions: dict(steps=20),
    # Both self-attentions: the tiny model's frame attention carries the object's shape, and replacing only
    # the temporal one (the reference) lets the target branch move the object (BENCHMARKS.md). The injection
    # lengths, 50% / 80% of the steps instead of SD's 20% / 50%, were chosen on held-out clips by
    # ``python -m vp2p_world.sweep``; every recorded run of the edit benchmark passed them as flags, while the demo,
    # the Gen-1 and long-clip benchmarks edited at SD's until they moved here (BENCHMARKS.md says how to rerun those;
    # the demo's clip: 26.1 -> 27.3 dB to the truth, structure IoU 0.90 -> 0.93).
    EditOptions: dict(self_replace_on="both", cross_replace=0.5, self_replace=0.8),
    # Edit guidance 2 for the first half of the steps: the tiny model draws the old colour back from the inverted
    # noise on some recolours (green -> red triangle: Tune-A-Video 0.12 of the frames, BENCHMARKS.md), and a larger
    # plain guidance did not help. Chosen on 24 held-out clips (seeds 401-424, 16 recolours and 8 shape swaps, half
    # moving; fast + composite, demo settings), accuracy / PSNR to the truth / background dB: off 0.854 / 25.46 /
    # 38.52 (recolours 0.969, shape swaps 0.625); 2 for the first half 0.870 / 25.73 / 38.46 (1.000, 0.609); 3 for
    # the first half 0.865 / 25.74 / 38.38 (1.000, 0.594); 3 on every step 0.859 / 25.64 / 36.07 (late guidance
    # pushes the new colour's rim into the background). The shipped workflows leave it off, as the reference has it.
    SamplerOptions: dict(edit_guidance=2.0, edit_guidance_steps=0.5),
    # Composite the decoded edit over the rendered frames: outside the local-blend mask the clip keeps its own
    # pixels instead of the VAE's round trip. With the outline mask (EditOptions.blend_region) the mask hugs
    # the object, so the composite grew it by 2 px and feathered 2 px (1 + 1 px now, below): on ten of the
    # benchmark's recolours (background / to truth, dB) a hard edge gave 25.8 / 21.5, 2 + 2 px 25.3 / 21.6, a 4-px
    # feather inside the mask 30.4 / 20.2 (the old colour bleeds into the object's rim), 8 + 8 px 23.7 / 20.8.
    # Inside the mask, pixels the edit changed by less than 0.1 (ramp to 0.3) keep the source's: the VAE's dark
    # halo and lost texture around the object go. Chosen on six held-out clips (seeds 201-206, which no benchmark
    # uses; background PSNR outside every pixel an object touches / PSNR to the truth, mean dB): off 30.93 / 21.70,
    # 0.15 33.58 / 21.84, 0.2 34.31 / 21.75, 0.3 36.47 / 21.55: from 0.15 on, more background costs truth (0.2 trades
    # 0.09 dB of it for 0.7 dB of background; beyond, the edit itself starts to be undone).
    # The mask's edge snaps to the frames' edges over 8 px (two latent pixels; kornia's guided filter, source and
    # edit as the guide) before the 2-px dilation: chosen on the 26-case suite's decoded edits (mask IoU at frame
    # size 0.57 -> 0.72, with 4 px 0.64), then checked on ten held-out clips (seeds 301-310, fast +
    # composite): mask IoU 0.60 -> 0.77 (worst frame 0.53 -> 0.69), background 29.0 -> 30.1 dB, PSNR to the truth
    # 21.24 -> 21.31 dB, accuracy 0.86 both.
    # Once the mask is snapped to the edges, the 2 + 2 px margin (chosen before, on the blocky mask) only lets the
    # decoded edit's halo past the object: 1 + 1 px, chosen on 17 held-out clips (seeds 201-205, 207, 208, 301-310;
    # fast + composite, the moving-world VAE; background / to truth dB, accuracy): 2 + 2 px 33.55 / 21.93, 0.875;
    # 1 + 1 px 34.38 / 21.96, 0.875; 0 + 0 px (a hard edge) 36.07 / 21.94, 0.868. Not the hard edge: it lost a frame
    # of accuracy, and a seam at the mask's edge is what a feather is for at any size (SD's 16 + 8 px at 512 px are
    # 2 + 1 px here); the background figure leaves out every pixel an object touches, so it favours no margin at
    # all.
    # Inside the mask, the source keeps the pixels of what passes in front of the object (occluder_threshold: 0.3
    # in RGB distance from every mix of the object's colour and the background's; the world's objects are one
    # colour). The coarse mask takes in the world's dark post where it crosses the object, and this model, which
    # never saw one, paints the object over it. Set once, not swept: the world's backgrounds, textures included,
    # stay within 0.15 of their median colour, and the post is 0.39 or more from every background colour and
    # 0.73 from every object colour (an anti-aliased rim is a mix: 0). On the 26-case suite (fast + composite)
    # it changes the three occluder clips alone, background 24.1 / 28.7 / 30.1 -> 34.9 / 35.0 / 34.6 dB, and on
    # 17 held-out clips (seeds 201-205, 207, 208, 301-310) the two occluder clips alone, 25.6 / 26.3 -> 31.2 /
    # 39.8 dB.
    # A recolour's mask is the very region the sampler blended in (an outline blend), so the 1 + 1 px margin only
    # lets the VAE's spill of the new colour past the object: recolours are pasted with a hard edge on the snapped
    # mask (recolour_margin off; a shape swap keeps its margin, its new outline may pass the mask). On the 16
    # recolours of 24 held-out clips (seeds 401-424, fast + composite; background / to truth dB, accuracy): margin
    # 39.67 / 25.39, 1.00; none 49.79 / 25.36, 1.00 (three clips' backgrounds exact, 100 dB; the other 13: 36.05 ->
    # 38.20). Every clip's background rose (0.1 to 11 dB).
    CompositeOptions: dict(composite=True, mask_dilation=1, feather=1, recolour_margin=False, change_threshold=0.2,
                           refine_radius=8, occluder_threshold=0.3),
    # The clip's light (an RGB gain per frame, relative to its brightest frame) taken out before encoding and put
    # back after decoding: tuned on the clip as lit, the green -> red triangle under drifting light edited 1 frame
    # of 8 (both inversions); with the light out, 8 of 8. On the 26-case suite (fast / null-text + composite)
    # accuracy 0.90 / 0.93 -> 0.94 / 0.97, PSNR to the truth 23.74 / 23.98 -> 24.26 / 24.51 dB; on the 24 held-out
    # clips 0.880 / 0.854 -> 0.865 / 0.828 (one borderline flickering shape swap lost), PSNR to the truth 26.15 /
    # 25.87 -> 26.31 / 26.05 dB; since the light is compared along the camera's pan (sixteenth run) 0.865 / 0.823
    # (a panning shape swap one frame short with null-text), the suite unchanged. An evenly lit clip with a still
    # camera gets gains of exactly 1 and edits as without it. It has no parameter; BENCHMARKS.md (fourteenth to
    # sixteenth moving-world runs) has the tables.
    LightOptions: dict(normalise_light=True),
}


def world_options(cls: type[Options], **overrides) -> Options:
    """``cls`` with the small world's defaults, then ``overrides``."""
    return cls(**{**WORLD_DEFAULTS.get(cls, {}), **overrides})


def flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_option_flags(parser: argparse.ArgumentParser, cls: type[Options], prefix: str = "",
                     skip: Iterable[str] = (), defaults: Optional[dict] = None) -> None:
    """One flag per widget option of ``cls``, named after the field (``prefix`` where two stages share a name),
    with the small world's default and the option's tooltip as help. Values are checked by ``cls`` itself."""
    base = {**WORLD_DEFAULTS.get(cls, {}), **(defaults or {})}
    group = parser.add_argument_group(cls.__name__)
    for s in cls.settings():
        if s.name in skip:
            continue
        default = base.get(s.name, s.default)
        help_text = f"{s.tooltip} (default: {default})".replace("%", "%%")  # argparse formats help with %
        kw = dict(dest=prefix.replace("-", "_") + s.name, default=default, help=help_text)
        if s.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif s.kind == "choice":
            kw["choices"] = list(s.choices)
        else:
            kw["type"] = {"int": int, "float": float, "fraction": float}.get(s.kind, str)
        group.add_argument(flag(s.name, prefix), **kw)


def options_from_args(args: argparse.Namespace, cls: type[Options], prefix: str = "", **overrides) -> Options:
    """The options of ``cls`` from the flags ``add_option_flags`` made (VP2PInputError names a bad one)."""
    values = {}
    for s in cls.settings(widgets_only=False):
        dest = prefix.replace("-", "_") + s.name
        if hasattr(args, dest):
            values[s.name] = getattr(args, dest)
    try:
        return world_options(cls, **{**values, **overrides})
    except VP2PInputError as e:  # name the flag the user typed
        name = str(e).partition(":")[0]
        if name in values and name not in overrides:
            raise as_flag(e, flag(name, prefix)) from None
        raise


def as_flag(error: VP2PInputError, flag_name: str) -> VP2PInputError:
    """An option's (or a loader's) error, ``name: what``, as the flag the user typed it with: ``--flag: what``."""
    head, _, rest = str(error).partition(": ")  # ': ', not ':' (C:\ in a path)
    qualifier = head.partition(" ")[2]  # "model 'C:\sd15'", "blend_words (source prompt)": kept after the flag
    return VP2PInputError(f"{flag_name}{' ' + qualifier if qualifier else ''}: {rest}")


def option_values(text: str, flag_name: str, check) -> list[float]:
    """Comma-separated numbers of a list flag (a benchmark's grid), each checked by its option before any work
    (``check`` raises the option's VP2PInputError, renamed here to the flag)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VP2PInputError(f"{flag_name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise VP2PInputError(f"{flag_name}: expected at least one value")
    for v in values:
        try:
            check(v)
        except VP2PInputError as e:
            raise VP2PInputError(f"{flag_name}: {e}") from None
    return values


def check_at_least(value: int, minimum: int, flag_name: str, what: str) -> None:
    """A count flag (``--frames``, ``--threads``) below its least value, refused by name before any work."""
    if value < minimum:
        raise VP2PInputError(f"{flag_name}: expected {what} of {minimum} or more, got {value}")


def check_clip_length(frames: int) -> None:
    """A world command's ``--frames`` (a rendered clip's length), checked by FramesOptions.frames, its one home."""
    try:
        FramesOptions(frames=frames)
    except VP2PInputError as e:
        raise as_flag(e, flag("frames")) from None
