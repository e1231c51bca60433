"""Save / Load Tuned Delta and Save / Load Inversion: one Save/Load pair per kind of result file."""
from __future__ import annotations

from comfy_api.latest import io

from vp2p_core import Delta, Inversion, VP2PInputError

from . import files
from .schema import CATEGORY, VP2PInversionIO, VP2PModelIO
from .types import VP2PModel


def _file_state(filename: str) -> str:
    """Re-run a loader when its file changes. A bad name is reported by the loader itself."""
    try:
        path = files.load_path(filename, "filename")
    except VP2PInputError as e:
        return f"missing:{e}"
    st = path.stat()
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def _save(obj, filename: str) -> io.NodeOutput:
    obj.save(files.save_path(filename, "filename"))
    rel = str(files.safe_name(filename, "filename"))
    return io.NodeOutput(rel, ui={"text": [f"saved {rel}"]})


def _filename(default: str, tooltip: str) -> io.String.Input:
    return io.String.Input("filename", default=default, tooltip=tooltip)


SAVE_TOOLTIP = "File name under ComfyUI's output folder; an existing file is replaced."
LOAD_TOOLTIP = "Name under models/vp2p or the output folder."
DELTA_FILE = "vp2p/clip.delta.safetensors"
INVERSION_FILE = "vp2p/clip.inversion.safetensors"


class SaveVP2PDelta(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveVP2PDelta", display_name="Save Tuned Delta (Video-P2P)", category=CATEGORY,
            description="Saves the tuned delta of a video model (safetensors) to re-edit later without tuning again.",
            inputs=[VP2PModelIO.Input("vp2p_model", tooltip="A tuned video model (from OneShotTune)."),
                    _filename(DELTA_FILE, SAVE_TOOLTIP)],
            outputs=[io.String.Output("saved_filename", display_name="filename", tooltip="The name to give LoadVP2PDelta.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, filename: str) -> io.NodeOutput:
        if vp2p_model.delta is None:
            raise VP2PInputError("vp2p_model: this model is not tuned; connect the output of OneShotTune")
        return _save(vp2p_model.delta, filename)


class LoadVP2PDelta(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadVP2PDelta", display_name="Load Tuned Delta (Video-P2P)", category=CATEGORY,
            description="Loads a saved tuned delta onto a video model of the same checkpoint; a delta made for "
                        "another checkpoint or clip length is refused.",
            inputs=[VP2PModelIO.Input("vp2p_model", tooltip="The untuned video model from InflateUNet (same "
                                                            "checkpoint and LoRAs)."),
                    _filename(DELTA_FILE, LOAD_TOOLTIP),
                    io.Latent.Input("latent", optional=True, tooltip="Optional: the clip, to check the delta was "
                                                                     "tuned on as many frames.")],
            outputs=[VP2PModelIO.Output("tuned_model", display_name="tuned_model", tooltip="The tuned video model.")],
        )

    @classmethod
    def fingerprint_inputs(cls, filename: str = "", **_) -> str:
        return _file_state(filename)

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, filename: str, latent=None) -> io.NodeOutput:
        delta = Delta.load(files.load_path(filename, "filename"))
        frames = None if latent is None else vp2p_model.latents(latent).shape[0]
        vp2p_model.check_delta_fits(delta, f"delta file {filename!r}", num_frames=frames)
        return io.NodeOutput(vp2p_model.tuned(delta))


class SaveVP2PInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveVP2PInversion", display_name="Save Inversion (Video-P2P)", category=CATEGORY,
            description="Saves an inversion (x_T, null embeddings, source trajectory) to edit the clip again later.",
            inputs=[VP2PInversionIO.Input("inversion", tooltip="From NullTextVideoInvert."),
                    _filename(INVERSION_FILE, SAVE_TOOLTIP)],
            outputs=[io.String.Output("saved_filename", display_name="filename", tooltip="The name to give LoadVP2PInversion.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion: Inversion, filename: str) -> io.NodeOutput:
        return _save(inversion, filename)


class LoadVP2PInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadVP2PInversion", display_name="Load Inversion (Video-P2P)", category=CATEGORY,
            description="Loads a saved inversion; one made with another model or tuning, or from a clip of another "
                        "length or size, is refused.",
            inputs=[VP2PModelIO.Input("vp2p_model", tooltip="The tuned video model the inversion was made with."),
                    _filename(INVERSION_FILE, LOAD_TOOLTIP),
                    io.Latent.Input("latent", optional=True, tooltip="Optional: the clip, to check the frame count "
                                                                     "and size.")],
            outputs=[VP2PInversionIO.Output("inversion", display_name="inversion", tooltip="The inversion, for VideoP2PSampler.")],
        )

    @classmethod
    def fingerprint_inputs(cls, filename: str = "", **_) -> str:
        return _file_state(filename)

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, filename: str, latent=None) -> io.NodeOutput:
        inv = Inversion.load(files.load_path(filename, "filename"))
        what = f"inversion file {filename!r}"
        inv.check_model(vp2p_model.fingerprint, what)
        vp2p_model.check_frames(inv.num_frames, what)
        if latent is not None:
            inv.check_latents(vp2p_model.latents(latent), what)
        return io.NodeOutput(inv)
