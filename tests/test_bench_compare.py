"""bench/compare_pipeline.py's bookkeeping: the reference harness's figures read into our stage names, the PSNR
formula, the table's ratios and the peak-RSS reader (the reference itself is not needed)."""
import json
import math

import pytest
import torch

from bench import compare_pipeline as cp


def _phase(seconds, calls=0, samples=None, backs=0):
    return dict(seconds=seconds, unet_calls=calls, unet_samples=calls if samples is None else samples,
                backward_passes=backs, peak_rss_mib=100.0)


def _summary(tmp_path):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 3, 2, 2, generator=g)  # b c f h w
    for key, noise in (("p2p_full", 0.1), ("p2p_fast", 0.2)):
        final = torch.cat([x0 + noise, x0 * 0])  # [source, target]
        torch.save(dict(x0=x0, final_latents=final, note="test"), tmp_path / f"latents_{key}.pt")
    tune = dict(wall_seconds=30.0, process_peak_rss_mib=900.0,
                phases=dict(load_prepare=_phase(2.0), train_loop=_phase(25.0, 20, backs=20), save_pipeline=_phase(0.5)))
    full = dict(wall_seconds=300.0, process_peak_rss_mib=1000.0,
                phases=dict(load=_phase(0.5), ddim_inversion=_phase(15.0, 50), null_text=_phase(250.0, 600, 650, 500),
                            edit=_phase(30.0, 50, 200), save_gifs=_phase(4.0)))
    fast = dict(wall_seconds=60.0, process_peak_rss_mib=800.0,
                phases=dict(load=_phase(0.5), ddim_inversion=_phase(15.0, 50),
                            between_inversion_and_edit=_phase(0.0), edit=_phase(30.0, 50, 200), save_gifs=_phase(4.0)))
    (tmp_path / "summary.json").write_text(json.dumps(
        dict(stages=dict(tune=tune, p2p_full=full, p2p_fast=fast), env=dict(threads=1))))
    return x0


def test_reference_figures_map_the_harness_phases_onto_our_stages(tmp_path):
    x0 = _summary(tmp_path)
    ref = cp.reference_figures(tmp_path)
    nt, fast = ref["null_text"], ref["fast"]
    assert nt["whole_seconds"] == 330.0 and fast["whole_seconds"] == 90.0  # tuning + editing process
    assert nt["peak_rss_mib"] == 1000.0 and fast["peak_rss_mib"] == 900.0  # the larger of the two processes
    st = nt["stages"]
    assert st["tune"] == dict(seconds=25.0, evaluations=20, backwards=20)
    assert st["load"]["seconds"] == pytest.approx(2.0 + 0.5 + 0.5 + 4.0)  # loading and saving, both processes
    assert st["null_text"] == dict(seconds=250.0, evaluations=650, backwards=500)  # samples, not calls
    assert st["edit"]["evaluations"] == 200 and fast["stages"]["null_text"]["evaluations"] == 0
    # latent PSNR: the harness's formula on the source branch (row 0 of final_latents)
    expect = 10 * math.log10(float(x0.max() - x0.min()) ** 2 / 0.01)
    assert nt["latent_psnr"] == pytest.approx(expect, rel=1e-5)
    assert nt["rec_latents"].shape == (3, 4, 2, 2)  # f c h w, for decoding


def test_table_reports_ratios_reference_over_ours(tmp_path):
    _summary(tmp_path)
    ref = cp.reference_figures(tmp_path)["null_text"]
    ref["pixel_psnr"] = None
    ours = dict(whole_seconds=110.0, latent_psnr=20.0, pixel_psnr=12.0, peak_rss_mib=500.0,
                stages={k: dict(seconds=v["seconds"] / 2, evaluations=1, backwards=0) for k, v in ref["stages"].items()})
    text = "\n".join(cp.table(ref, ours, "null_text path"))
    assert "| whole path | 330.00 | 110.00 | 3.00x |" in text
    assert "| null_text | 250.00 | 125.00 | 2.00x | 650 | 1 | 500 | 0 |" in text
    assert "(ratio 0.50)" in text  # peak RSS ours / reference


def test_peak_rss_is_this_processs_high_water_mark():
    assert cp.peak_rss_mib() > 10
