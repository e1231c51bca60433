"""Context windows (vp2p_core.context): schedules and weights worked by hand, the one-window equivalence (bit for
bit), the null-text gradient over windows, a long edit without seams, and the errors."""
import pytest
import torch

import vp2p_core.inversion as inversion_mod
from vp2p_core import (DDIMSchedule, EditOptions, InversionOptions, TuneOptions, VP2PInputError, VideoModel,
                       build_edit_plan, invert, one_shot_tune, sample_edit, trained_weights, video_forward)
from vp2p_core.context import (ContextWindows, fuse, fuse_weights, normalised_weights, standard_windows,
                               whole_clip)
from vp2p_core.options import ContextOptions
from vp2p_world.metrics import seam_ratio
from vp2p_world.tiny import ToyTokenizer, tiny_unet, tiny_video_model, toy_embed

torch.set_num_threads(1)

SRC, TGT = "a red ball on grass", "a blue ball on grass"


def windows(length, overlap=0, **kw):
    return ContextWindows(ContextOptions(context_length=length, context_overlap=overlap, **kw))


# -- schedules and weights, by hand ---------------------------------------------------------------------------

@pytest.mark.parametrize("frames,length,overlap,schedule,expected", [
    (10, 4, 1, "standard_static", [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]),
    (20, 16, 4, "standard_static", [list(range(16)), list(range(4, 20))]),
    (28, 16, 4, "standard_static", [list(range(16)), list(range(12, 28))]),  # the last start is a regular one
    (17, 16, 4, "standard_static", [list(range(16)), list(range(1, 17))]),
    (10, 4, 1, "batched", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),
    (8, 16, 4, "standard_static", [list(range(8))]),  # a window longer than the clip is the clip
    (16, 16, 4, "batched", [list(range(16))]),
])
def test_core_schedules_by_hand(frames, length, overlap, schedule, expected):
    assert standard_windows(frames, length, overlap, schedule) == expected


def test_fuse_weights_by_hand():
    assert fuse_weights("pyramid", range(4), 10, 1) == [1, 2, 2, 1]
    assert fuse_weights("pyramid", range(5), 10, 1) == [1, 2, 3, 2, 1]
    assert fuse_weights("flat", range(3), 10, 1) == [1, 1, 1]
    rel = fuse_weights("relative", [4, 5, 6, 7, 8], 10, 1)  # middle 6, half-span (4 + 0.01) / 2
    assert rel == pytest.approx([0.01, 1 - 1 / 2.005, 1.0, 1 - 1 / 2.005, 0.01])
    first, middle, last = (fuse_weights("overlap-linear", f, 10, 2) for f in ([0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]))
    assert first == pytest.approx([1, 1, 1, 1e-37]) and last == pytest.approx([1e-37, 1, 1, 1])
    assert middle == pytest.approx([1e-37, 1, 1, 1e-37])
    with pytest.raises(VP2PInputError, match="fuse_method"):
        fuse_weights("median", range(4), 10, 1)


def test_windows_carry_the_first_frame_as_a_weightless_anchor_and_weights_sum_to_one_per_frame():
    ws = windows(4, 1).windows(10)
    assert [w.frames for w in ws] == [(0, 1, 2, 3), (0, 3, 4, 5, 6), (0, 6, 7, 8, 9)]
    assert [w.weights for w in ws] == [(1, 2, 2, 1), (0, 1, 2, 2, 1), (0, 1, 2, 2, 1)]
    total = torch.zeros(10)
    for w, n in zip(ws, normalised_weights(ws, 10)):
        total.index_add_(0, w.index(), n)
    assert torch.allclose(total, torch.ones(10))
    assert normalised_weights(ws, 10)[0].tolist() == pytest.approx([1, 1, 1, 1 / 2])  # frame 3: 1 / (1 + 1)


def test_fuse_of_a_frame_wise_function_is_that_function_and_one_window_is_the_function_itself():
    x = torch.randn(2, 11, 3)
    fn = lambda xw, w, wn: xw * 2 + 1  # frame-wise: every window agrees on every frame
    assert torch.allclose(fuse(fn, x, windows(4, 2).windows(11)), x * 2 + 1, atol=1e-6)
    calls = []
    one = fuse(lambda xw, w, wn: calls.append(xw) or xw.sin(), x, whole_clip(11))
    assert calls[0] is x and torch.equal(one, x.sin())


def test_fuse_blends_each_frame_by_its_windows_fuse_weights():
    """Where windows disagree (the function returns its window's number), each frame's output is the weighted mean of
    its windows' outputs at their fuse weights, worked out from the windows' own weights: a frame in one window is
    that window's, a shared frame lies between, and an anchor row of weight 0 (frame 0 in later windows) counts
    nothing. A frame-wise function, where every window agrees, could not tell blending from the last window winning."""
    x = torch.zeros(1, 11, 2)
    ws = windows(4, 2).windows(11)
    number = {w.frames: i for i, w in enumerate(ws)}
    out = fuse(lambda xw, w, wn: torch.full_like(xw, float(number[w.frames])), x, ws)
    for f in range(11):
        pairs = [(float(number[w.frames]), w.weights[w.frames.index(f)]) for w in ws if f in w.frames]
        pairs = [(v, wt) for v, wt in pairs if wt > 0]
        expected = sum(v * wt for v, wt in pairs) / sum(wt for _, wt in pairs)
        torch.testing.assert_close(out[0, f], torch.full((2,), expected))
    assert out[0, 0, 0] == 0.0 and 0.0 < out[0, 2, 0] < 1.0  # frame 0 only in the first; frame 2 in two windows


def test_the_uniform_schedules_are_comfyuis_and_refused_outside_it():
    """(tests/integration/check_context.py compares the node's ComfyUI windows with these inside ComfyUI.)"""
    o = ContextOptions(context_length=16, context_overlap=4, context_schedule="standard_uniform")
    with pytest.raises(VP2PInputError, match="context_schedule: 'standard_uniform'.*ComfyUI"):
        ContextWindows(o).windows(64)
    assert ContextWindows(o).windows(16)[0].frames == tuple(range(16))  # one window: no schedule needed
    # a clip shorter than a looped window runs whole, as ComfyUI runs it (it was refused)
    short = windows(16, 4, context_schedule="looped_uniform")
    short.check_clip(12)
    assert [w.frames for w in short.windows(12)] == [tuple(range(12))]


@pytest.mark.parametrize("make,message", [
    (lambda: ContextOptions(context_length=8, context_overlap=8), "context_overlap: expected fewer frames than "
                                                                   "context_length"),
    (lambda: ContextOptions(context_length=0), "context_length: expected a value in"),
    (lambda: windows(16, 4, context_schedule="standard_uniform").check_clip(40), "runs inside ComfyUI only"),
])
def test_bad_context_input_is_refused_naming_it(make, message):
    with pytest.raises(VP2PInputError, match=message):
        make()


# -- the stages ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    tok = ToyTokenizer()
    emb = toy_embed(tok, [SRC, TGT, ""])
    model = tiny_video_model(torch.Generator().manual_seed(3))  # a non-trivial temporal path, as after tuning
    return tok, emb, model


def _plan(tok, emb, **kw):
    plan = build_edit_plan(tok, SRC, [TGT], options=EditOptions(**kw))
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    return plan


def test_one_window_covering_the_clip_is_bit_identical_in_every_stage(world):
    tok, emb, model = world
    latents = torch.randn(5, 4, 16, 16, generator=torch.Generator().manual_seed(5)) * 0.8
    one = windows(5, 2)  # exactly the clip's length; a longer window is the same
    opts = InversionOptions(mode="null_text", steps=4, inner_steps=3)
    a = invert(model, latents, emb[:1], emb[2:3], SRC, options=opts)
    b = invert(model, latents, emb[:1], emb[2:3], SRC, options=opts, context=one)
    assert torch.equal(a.x_T, b.x_T) and torch.equal(a.null_embeddings, b.null_embeddings)
    assert torch.equal(a.trajectory, b.trajectory)
    plan = _plan(tok, emb, blend_words="ball")
    ea, eb = sample_edit(model, a, plan), sample_edit(model, b, plan, context=windows(9, 2))
    assert torch.equal(ea.edited, eb.edited) and torch.equal(ea.blend_mask, eb.blend_mask)
    assert torch.equal(ea.attention_maps, eb.attention_maps)
    with trained_weights(model):
        da = one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=3))
    with trained_weights(model):
        db = one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=3), context=one)
    assert da.losses == db.losses and all(torch.equal(da.tensors[k], db.tensors[k]) for k in da.tensors)


def test_the_stop_button_is_asked_before_every_window(world):
    """A long clip's step is many windows (128 frames through 16-frame windows: about 11 UNet calls a step): the
    sampler and the DDIM inversion ask the host's stop button before each, not once a step."""
    from vp2p_core import Host

    tok, emb, model = world
    latents = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(5)) * 0.8
    calls = []
    host = Host(interrupt=lambda: calls.append(1))
    ctx = windows(4, 2)
    per_step = len(ctx.windows(6))
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=2), host=host,
                 context=ctx)
    assert len(calls) == 2 * (per_step + 1)  # each DDIM step: its windows, then the step
    calls.clear()
    sample_edit(model, inv, _plan(tok, emb), host=host, context=ctx)
    assert len(calls) == 2 * (per_step + 1)


def test_the_sampler_says_when_its_windows_are_not_the_inversions(world, caplog):
    """An inversion records the windows it was made through ("": the whole clip); a sampler run through other
    windows, or on the whole clip at once, says so (a saved long inversion re-edited without its Context Windows
    node runs every frame at once); the same windows, or a window that covers the clip, say nothing."""
    tok, emb, model = world
    latents = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(5)) * 0.8
    opts = InversionOptions(mode="fast", steps=2)
    windowed = invert(model, latents, emb[:1], emb[2:3], SRC, options=opts, context=windows(4, 2))
    whole = invert(model, latents, emb[:1], emb[2:3], SRC, options=opts, context=windows(6, 2))
    assert windowed.stats["windows"] and whole.stats["windows"] == ""
    plan = _plan(tok, emb)
    with caplog.at_level("WARNING", logger="vp2p_core.sampling"):
        sample_edit(model, windowed, plan, context=windows(4, 2))
        sample_edit(model, whole, plan)
        assert not caplog.records
        sample_edit(model, windowed, plan)
        assert "made through context windows, the sampler runs on the whole clip at once" in caplog.text
        assert "needs the memory the windows spared" in caplog.text
        caplog.clear()
        sample_edit(model, windowed, plan, context=windows(5, 2))
        assert "runs through other context windows" in caplog.text
        caplog.clear()
        sample_edit(model, whole, plan, context=windows(4, 2))
        assert "made on the whole clip at once, the sampler runs through context windows" in caplog.text


def test_windowed_null_text_loss_gives_the_whole_clips_gradient_when_frames_do_not_interact(world, monkeypatch):
    """With each frame on its own (no temporal attention, no shared frame, per-frame GroupNorm), the windows'
    losses sum to the clip's MSE and their gradients to the clip's gradient; so do the whole optimisations."""
    tok, emb, model = world

    def independent_eps(model, schedule, x, t, text, f):
        return schedule.to_eps(video_forward(model.unet, x, t, text, f, independent=True), t, x)

    monkeypatch.setattr(inversion_mod, "_eps", independent_eps)
    f = 11
    x = torch.randn(f, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    target = x * 0.9
    sched = DDIMSchedule(model.schedule, 4)
    t = int(sched.timesteps[0])
    cond = emb[:1]
    with torch.no_grad():
        eps_c = independent_eps(model, sched, x, t, cond, f)

    def guided(e, xs, ec):
        eu = independent_eps(model, sched, xs, t, e, xs.shape[0])
        return sched.prev_step(eu + 7.5 * (ec - eu), t, xs)

    e = emb[2:3].clone().requires_grad_(True)
    whole = torch.nn.functional.mse_loss(guided(e, x, eps_c), target)
    (g_whole,) = torch.autograd.grad(whole, e)
    ws = windows(4, 1).windows(f)
    e2 = emb[2:3].clone().requires_grad_(True)
    total = 0.0
    for w, wn in zip(ws, normalised_weights(ws, f)):
        idx = w.index()
        loss = inversion_mod.windowed_null_loss(guided(e2, x[idx], eps_c[idx]), target[idx], wn, f)
        loss.backward()
        total += float(loss.detach())
    assert total == pytest.approx(float(whole.detach()), rel=1e-5)
    assert torch.allclose(e2.grad, g_whole, rtol=1e-4, atol=1e-7 * float(g_whole.abs().max()))
    opts = InversionOptions(mode="null_text", steps=3, inner_steps=2)
    a = invert(model, x, cond, emb[2:3], SRC, options=opts)
    b = invert(model, x, cond, emb[2:3], SRC, options=opts, context=windows(4, 1))
    assert torch.allclose(a.x_T, b.x_T, atol=1e-5)
    assert torch.allclose(a.null_embeddings, b.null_embeddings, atol=1e-4)


def test_tuning_draws_one_window_per_step_and_leaves_the_anchor_out_of_the_loss(world, monkeypatch):
    tok, emb, model = world
    seen = []
    real = video_forward

    def spy(unet, sample, t, text, f, **kw):
        seen.append(f)
        return real(unet, sample, t, text, f, **kw)

    import vp2p_core.tuning as tuning_mod
    monkeypatch.setattr(tuning_mod, "video_forward", spy)
    latents = torch.randn(20, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with trained_weights(model):
        d = one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=6), context=windows(8, 2))
    assert d.num_frames == 20 and len(d.losses) == 6
    assert set(seen) <= {8, 9} and 9 in seen  # a window (8 frames), with the clip's first frame where it lacks it


def test_a_long_edit_through_windows_has_no_seams():
    """24 frames of a slowly moving pattern, 8-frame windows: the frame-to-frame change where the windows change
    is no larger than inside them. The model's frames interact strongly (temporal attention's output at 0.3, six
    times the other tests'), so windows side by side without overlap leave seams (ratio 1.65 measured), which
    overlapping windows blended over their overlap do not (1.04)."""
    tok = ToyTokenizer()
    emb = toy_embed(tok, [SRC, TGT, ""])
    model = tiny_video_model(torch.Generator().manual_seed(3), temporal_scale=0.3)
    f = 24
    g = torch.Generator().manual_seed(11)
    base = torch.randn(4, 16, 40, generator=g) * 0.8
    base = torch.nn.functional.avg_pool1d(base.flatten(0, 1)[:, None], 5, 1, 2)[:, 0].view(4, 16, 40) * 2
    latents = torch.stack([base[:, :, k:k + 16] for k in range(f)])  # a pan, one latent pixel per frame

    def seams(ctx):
        inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=6),
                     context=ctx)
        return seam_ratio(sample_edit(model, inv, _plan(tok, emb, blend_words="ball"), context=ctx).edited[0],
                          ctx.windows(f))

    ratio, apart = seams(windows(8, 2)), seams(windows(8, 0, context_schedule="batched"))
    assert 0.5 < ratio <= 1.1, ratio  # (above 0.5: not a clip that stands still; the last window winning: 1.16)
    assert apart > 1.3, f"windows kept apart show no seam ({apart}): the test cannot tell"


def test_ddim_inversion_asks_each_timestep_for_the_windows_of_its_denoising_step(world):
    """ComfyUI's uniform schedules shift their windows by the step number; DDIM inversion runs the timesteps
    backwards (the last denoising step's first), so it asks for the step at which null-text and the edit meet the
    same timestep, not for its own loop count."""
    tok, emb, model = world
    asked = []

    def schedule(num_frames, step):
        asked.append(step)
        return standard_windows(num_frames, 4, 1)

    context = ContextWindows(ContextOptions(context_length=4, context_overlap=1), schedule=schedule)
    x = torch.randn(7, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    inversion_mod.ddim_inversion(model, x, emb[:1], DDIMSchedule(model.schedule, 3), context=context)
    assert asked == [2, 1, 0]  # timesteps[2], [1], [0] of the denoising order: the low-noise end first


def test_a_looped_window_through_the_first_frame_does_not_see_it_twice():
    """A looped window that wraps ([3, 4, 0, 1]) holds frame 0 already: it moves to the front (the anchor row) with
    its own weight, rather than a second copy of it prepended."""
    context = ContextWindows(ContextOptions(context_length=4, context_overlap=1),
                             schedule=lambda n, step: [[3, 4, 0, 1], [1, 2, 3, 4]],
                             weight_function=lambda frames, n: [float(f + 1) for f in frames])
    looped, plain = context.windows(5)
    assert looped.frames == (0, 3, 4, 1) and looped.weights == (1.0, 4.0, 5.0, 2.0)
    assert plain.frames == (0, 1, 2, 3, 4) and plain.weights == (0.0, 2.0, 3.0, 4.0, 5.0)


def test_first_prev_windows_hold_each_frames_previous_frame(world, monkeypatch):
    """Tune-A-Video's frame attention reads each row's previous row: a window's first frame gets its previous frame
    as a row of weight 0 (frame 4 of (0, 4, 5, 6, 7) would otherwise attend to frame 0 twice); every stage asks for
    the windows with the model's frame_attention, and the memory estimate counts the row."""
    from vp2p_core.memory import call_rows

    context = windows(4, 1)
    first = context.windows(11)
    prev = context.windows(11, frame_attention="first_prev")
    assert [w.frames for w in first] == [(0, 1, 2, 3), (0, 3, 4, 5, 6), (0, 6, 7, 8, 9), (0, 7, 8, 9, 10)]
    assert [w.frames for w in prev] == [(0, 1, 2, 3), (0, 2, 3, 4, 5, 6), (0, 5, 6, 7, 8, 9), (0, 6, 7, 8, 9, 10)]
    for a, b in zip(first, prev):  # the added rows weigh nothing; the others keep their weights
        assert [w for w in b.weights if w] == [w for w in a.weights if w]
        assert sum(b.weights) == sum(a.weights)
    assert call_rows(11, context) == 5 and call_rows(11, context, frame_attention="first_prev") == 6
    tok, emb, _ = world
    model = VideoModel.from_unet(tiny_unet(), frame_attention="first_prev")
    asked = []
    real = ContextWindows.windows

    def spy(self, num_frames, step=0, frame_attention="first"):
        asked.append(frame_attention)
        return real(self, num_frames, step=step, frame_attention=frame_attention)

    monkeypatch.setattr(ContextWindows, "windows", spy)
    x = torch.randn(7, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    inv = invert(model, x, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="null_text", steps=2, inner_steps=1),
                 context=context)
    with trained_weights(model):
        one_shot_tune(model, x, emb[:1], SRC, options=TuneOptions(steps=1), context=context)
    plan = build_edit_plan(tok, SRC, [TGT], options=EditOptions())
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    sample_edit(model, inv, plan, context=context)
    assert asked and set(asked) == {"first_prev"}


def test_first_prev_rows_follow_their_previous_frame_in_looped_windows():
    """Every first_prev row that counts (a weight above 0; not a window's first) reads the row before it as its
    previous frame, which must be the frame before it in the clip (frame 0's own previous frame is frame 0).
    ComfyUI's strided looped windows repeat frame 0 ([0, 2, 4, 0]); its second copy read frame 4 as its previous
    frame, with weight 1."""
    schedules = [[[0, 2, 4, 0], [1, 3, 5, 1]], [[3, 4, 5, 0], [0, 1, 2, 3]], [[0, 1, 2, 3, 4, 5]]]
    for lists in schedules:
        context = ContextWindows(ContextOptions(context_length=4, context_overlap=1),
                                 schedule=lambda n, step, lists=lists: lists)
        for w in context.windows(6, frame_attention="first_prev"):
            weighed = [(i, f) for i, (f, wt) in enumerate(zip(w.frames, w.weights)) if i and wt > 0]
            assert all(w.frames[i - 1] == max(f - 1, 0) for i, f in weighed), w.frames
        whole = {f: 0.0 for f in range(6)}
        for w in context.windows(6, frame_attention="first_prev"):  # the added rows weigh nothing
            for f, wt in zip(w.frames, w.weights):
                whole[f] += wt
        plain = {f: 0.0 for f in range(6)}
        for w in context.windows(6):
            for f, wt in zip(w.frames, w.weights):
                plain[f] += wt
        assert whole == plain
    looped = ContextWindows(ContextOptions(context_length=4, context_overlap=1),
                            schedule=lambda n, step: [[0, 2, 4, 0], [1, 3, 5, 1]])
    assert looped.windows(6, frame_attention="first_prev")[0].frames == (0, 1, 2, 3, 4, 0, 0)


def test_attention_maps_through_windows_are_the_whole_clips():
    """Each window adds its frames' cross-attention maps at their fuse weights, and a step counts once however many
    windows it has: the exported maps (and the blend mask) through windows (0-3, then 3-6 with frame 0 as a
    weightless anchor; frame 3 in both, at uneven weights) equal the whole clip's, over two steps."""
    from vp2p_core.context import Window
    from vp2p_core.control import AttentionController

    tok = ToyTokenizer()
    plan = build_edit_plan(tok, SRC, [TGT], options=EditOptions(blend_words="ball"))
    f, n_tok = 7, 64
    g = torch.Generator().manual_seed(8)
    # each frame its own maps [1+n, F, heads, N, 77], another set each step: a frame's maps landing on another
    # frame's row, or at another weight, shows
    steps = [torch.softmax(torch.randn(2, f, 2, n_tok, 77, generator=g) * 3, -1) for _ in range(2)]

    def run(windows):
        ctrl = AttentionController(plan, num_steps=4, num_frames=f, latent_hw=(16, 16), blend_layers=["up"],
                                   vae_factor=8)
        for probs in steps:
            ctrl.set_windows(windows)
            for w, wn in zip(windows, normalised_weights(windows, f)):
                if len(windows) > 1:
                    ctrl.enter_window(w, wn)
                ctrl.cross(probs[:, list(w.frames)].clone(), "up")
            ctrl.leave_windows()
            ctrl.end_step(torch.zeros(2, f, 4, 16, 16))
        return ctrl

    whole = run(whole_clip(f))
    split = run([Window((0, 1, 2, 3), (1, 2, 3, 1)), Window((0, 3, 4, 5, 6), (0, 2, 2, 1, 1))])
    assert torch.allclose(split.attention_maps(), whole.attention_maps(), atol=1e-6)
    assert split.map_count == whole.map_count == 2
    assert torch.equal(split.edit_mask(), whole.edit_mask())


def test_a_host_schedule_is_checked_at_every_step_before_any_work():
    """ComfyUI's uniform schedules change their windows from step to step, and with a stride above 1 some steps leave
    frames uncovered: the stage refuses that before it starts, naming the step, instead of failing at that step after
    the work before it. The row count for memory is the largest over the steps."""
    def schedule(num_frames, step):  # step 3 leaves frame 9 out; step 1 has a window without frame 0 (an anchor row)
        return {1: [[1, 2, 3, 4, 5, 6], [0, 7, 8, 9]], 3: [[0, 1, 2, 3, 4, 5], [0, 6, 7, 8]]}.get(
            step, [[0, 1, 2, 3, 4, 5], [0, 6, 7, 8, 9]])
    ctx = ContextWindows(ContextOptions(context_length=6, context_overlap=2, context_schedule="standard_uniform"),
                         schedule=schedule)
    ctx.check_clip(10, steps=3)
    with pytest.raises(VP2PInputError, match=r"frames \[9\] of 10 are in no window.*at step 4 of 5 for latents.*try another schedule"):
        ctx.check_clip(10, steps=5)
    from vp2p_core.memory import call_rows

    assert call_rows(10, ctx) == 6 and call_rows(10, ctx, steps=3) == 7  # step 1: (0, 1..6), the anchor row


def test_relative_weights_peak_in_the_middle_of_a_window_that_wraps():
    """A looped window past the clip's end (60..63, 0..11) weighs its rows by their place in it, as an unwrapped one:
    at most 1, the peak in the middle (by frame index the weights were about 2 and peaked at frame 0)."""
    wrapped = fuse_weights("relative", list(range(60, 64)) + list(range(12)), 64, 4)
    plain = fuse_weights("relative", list(range(20, 36)), 64, 4)
    assert wrapped == pytest.approx(plain) and max(wrapped) <= 1 and wrapped.index(max(wrapped)) in (7, 8)
