"""Defects found when the extension ran on a real ComfyUI: each test failed before its fix."""
from __future__ import annotations

import os

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


def _truncated(path):
    _our_file(path, "delta")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _random_bytes(path):
    path.write_bytes(os.urandom(300))


def _foreign(path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("make", [_truncated, _random_bytes, _foreign], ids=["truncated", "random", "foreign"])
@pytest.mark.parametrize("kind, saver", [("delta", "SaveVP2PDelta"), ("inversion", "SaveVP2PInversion")])
def test_corrupt_or_foreign_file_names_input_file_and_expectation(tmp_path, make, kind, saver):
    path = tmp_path / "clip.safetensors"
    make(path)
    with pytest.raises(VP2PInputError) as e:
        load_checked(path, kind)
    msg = str(e.value)
    assert msg.startswith("filename: ") and str(path) in msg, msg
    assert f"expected {'an' if kind == 'inversion' else 'a'} {kind} file written by {saver}" in msg, msg
