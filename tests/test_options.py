"""The options objects: every setting's one home (default, range, check) for nodes, core and commands."""
from __future__ import annotations

import argparse

import pytest

from vp2p_core import VP2PInputError
from vp2p_core.options import STAGES, CompositeOptions, EditOptions, InversionOptions, StructureOptions, TuneOptions
from vp2p_world.settings import WORLD_DEFAULTS, add_option_flags, options_from_args, world_options


@pytest.mark.parametrize("cls", STAGES, ids=[c.__name__ for c in STAGES])
def test_defaults_pass_their_own_checks_and_every_widget_has_a_tooltip(cls):
    options = cls()
    for s in cls.settings(widgets_only=False):
        assert s.tooltip.strip(), s.name
        assert s.check(getattr(options, s.name)) == getattr(options, s.name)
        if s.kind in ("int", "float") and s.widget:
            assert s.min is not None and s.max is not None and s.min <= s.default <= s.max, s.name
        if s.kind == "choice":
            assert s.default in s.choices


@pytest.mark.parametrize("cls,field,value,message", [
    (TuneOptions, "steps", -1, "steps: expected a value in [0, 10000], got -1"),
    (TuneOptions, "precision", "fp8", "precision: expected one of"),
    (TuneOptions, "gradient_checkpointing", 1, "gradient_checkpointing: expected true or false"),
    (InversionOptions, "steps", 0, "steps: expected a value in [1, 500]"),
    (InversionOptions, "lr_scale", 0.0, "lr_scale: expected a value in [0.01, 100]"),
    (InversionOptions, "mode", "exact", "mode: expected one of ('null_text', 'fast', 'negative_prompt')"),
    (EditOptions, "cross_replace", 1.5, "cross_replace: expected a fraction of the steps"),
    (EditOptions, "cross_replace", (0.6, 0.2), "cross_replace: expected a fraction of the steps"),
    (EditOptions, "mask_threshold", 1.0, "mask_threshold: expected a value in [0.01, 0.99]"),
    (EditOptions, "blend_start", "0.2", "blend_start: expected a number"),
    (EditOptions, "blend_dilation", -1, "blend_dilation: expected a value in [0, 256]"),
    (EditOptions, "blend_dilation", 1.5, "blend_dilation: expected a whole number"),
    (EditOptions, "blend_smoothing", 9, "blend_smoothing: expected a value in [0, 8]"),
    (CompositeOptions, "mask_dilation", -1, "mask_dilation: expected a value in [0, 512]"),
    (CompositeOptions, "feather", 300, "feather: expected a value in [0, 256]"),
    (CompositeOptions, "composite", 1, "composite: expected true or false"),
    (StructureOptions, "structure_blur", float("nan"), "structure_blur: expected a number"),
])
def test_bad_values_are_refused_naming_the_option(cls, field, value, message):
    with pytest.raises(VP2PInputError) as e:
        cls(**{field: value})
    assert str(e.value).startswith(message)


def test_checks_across_fields():
    with pytest.raises(VP2PInputError, match="start_percent / end_percent"):
        StructureOptions(start_percent=0.8, end_percent=0.2)
    with pytest.raises(VP2PInputError, match="blend_words: target blend words were given without"):
        EditOptions(blend_target_words="cat")
    with pytest.raises(VP2PInputError, match="reweight_values: 3 values for 2 reweight words"):
        EditOptions(reweight_words="a b", reweight_values="1, 2, 3")
    for bad in ("nan", "2, inf", "1e39"):  # they parse as floats: every reweighted map NaN, or a float32 overflow
        with pytest.raises(VP2PInputError, match="^reweight_values: expected finite numbers"):
            EditOptions(reweight_words="a b", reweight_values=bad)


def test_widget_values_convert_and_unknown_keys_are_ignored():
    o = InversionOptions.from_values({"steps": 4.0, "guidance": 7, "cache_dir": "x", "source_prompt": "p"})
    assert o.steps == 4 and isinstance(o.steps, int) and o.guidance == 7.0 and isinstance(o.guidance, float)
    assert EditOptions(cross_replace=(0.1, 0.4)).cross_replace == (0.1, 0.4)


def test_cache_key_changes_with_any_value():
    """Every inversion setting is in the cache key but null_text_checkpointing, which gives the same embeddings."""
    base = InversionOptions().cache_key()
    for s in InversionOptions.settings(widgets_only=False):
        if s.kind in ("int", "float"):
            other = (s.min + s.max) / 2 if s.kind == "float" else int(s.min + s.max) // 2
        else:
            other = {"choice": s.choices[-1], "bool": False}[s.kind]
        assert other != getattr(InversionOptions(), s.name)
        changed = InversionOptions(**{s.name: other}).cache_key()
        assert (changed == base) == (s.name == "null_text_checkpointing"), s.name
    # fast and negative_prompt run no optimisation: its settings do not change their inversions
    fast = InversionOptions(mode="fast")
    for name in ("inner_steps", "early_stop", "early_stop_ratio", "lr_scale", "null_text_checkpointing", "guidance"):
        assert fast.replace(**{name: InversionOptions(mode="null_text", inner_steps=9, early_stop=0.5,
                                                      early_stop_ratio=0.1, lr_scale=2.0, guidance=3.0,
                                                      null_text_checkpointing="on").__dict__[name]}).cache_key() \
            == fast.cache_key(), name
    assert fast.replace(steps=7).cache_key() != fast.cache_key()
    # tuning: gradient checkpointing gives the same delta, every other setting another one
    tune = TuneOptions()
    assert tune.replace(gradient_checkpointing=False).cache_key() == tune.cache_key()
    assert tune.replace(steps=7).cache_key() != tune.cache_key()


def test_world_defaults_and_flags_are_the_fields():
    """The small world's commands: --field-name flags with the world's defaults, checked by the options."""
    p = argparse.ArgumentParser()
    add_option_flags(p, TuneOptions, prefix="tune-")
    add_option_flags(p, EditOptions)
    a = p.parse_args(["--cross-replace", "0.3", "--tune-steps", "7", "--no-tune-gradient-checkpointing"])
    tune, edit = options_from_args(a, TuneOptions, prefix="tune-"), options_from_args(a, EditOptions)
    assert tune.steps == 7 and tune.gradient_checkpointing is False
    assert edit.cross_replace == 0.3 and edit.self_replace == WORLD_DEFAULTS[EditOptions]["self_replace"] == 0.8
    assert edit.self_replace_on == WORLD_DEFAULTS[EditOptions]["self_replace_on"]
    assert world_options(TuneOptions).steps == WORLD_DEFAULTS[TuneOptions]["steps"] != TuneOptions().steps
    with pytest.raises(VP2PInputError, match="^--tune-steps: expected a value in"):
        options_from_args(p.parse_args(["--tune-steps", "-3"]), TuneOptions, prefix="tune-")


def test_null_text_caches_past_50_steps_are_keyed_by_their_schedule_of_rate_and_stop():
    """Past 50 steps the rate's decay and the early stop's bound changed (spread over the schedule), so inversions
    cached before are not reused there; up to 50 steps, where neither changed, the key is as it was."""
    long_key = InversionOptions(steps=60).cache_key()
    assert long_key["lr_decay"] == "1 - i / (2 * steps)" and "50 / steps" in long_key["stop_bound"]
    assert not {"lr_decay", "stop_bound"} & set(InversionOptions(steps=50).cache_key())
    assert not {"lr_decay", "stop_bound"} & set(InversionOptions(steps=60, mode="fast").cache_key())


def test_every_float_widget_can_show_its_range_and_default():
    """ComfyUI's frontend (1.27) shows and rounds a float widget to the decimals of its step (0.5 without one),
    whatever ``round`` says: a learning rate with step 1e-6 showed its minimum 1e-7 as 0.000000 and could not be set
    between steps, and lr_scale (step 0.1) could not go below 0.1 though its minimum is 0.01."""
    import math

    import vp2p_core.options as options

    kinds = [c for c in vars(options).values() if isinstance(c, type) and issubclass(c, options.Options)]
    checked = 0
    for cls in kinds:
        for s in cls.settings():
            if s.kind not in ("float", "fraction"):
                continue
            decimals = max(0, -math.floor(math.log10(s.step or 0.5)))
            for v in (s.min, s.max, s.default):
                assert v is None or abs(round(v, decimals) - v) <= 1e-12 * max(1.0, abs(v)), (cls.__name__, s.name, v)
            checked += 1
    assert checked >= 15
