"""Defects found when the extension ran on a real ComfyUI: each test failed before its fix."""
from __future__ import annotations

import pytest
import torch

from vp2p_core import VP2PInputError
from vp2p_core.files import atomic_save, load_checked

torch.set_num_threads(1)


# --- our files: kinds, corrupt and foreign files ----------------------------------------------------------

def _our_file(path, kind: str):
    atomic_save({"x": torch.zeros(4)}, path, {"vp2p_kind": kind})
    return path


def test_wrong_kind_message_uses_the_right_article(tmp_path):
    delta = _our_file(tmp_path / "d.safetensors", "delta")
    with pytest.raises(VP2PInputError) as e:
        load_checked(delta, "inversion")
    msg = str(e.value)
    assert "is a delta file, not an inversion" in msg and "a inversion" not in msg
    inversion = _our_file(tmp_path / "i.safetensors", "inversion")
    with pytest.raises(VP2PInputError, match="is an inversion file, not a delta"):
        load_checked(inversion, "delta")
