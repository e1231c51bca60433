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


def _save(obj, filename: str, kind: str) -> io.NodeOutput:
    obj.save(files.save_path(filename, "filename", kind))
    rel = str(files.safe_name(filename, "filename"))
    return io.NodeOutput(rel, ui={"text": [f"saved {rel}"]})


def _filename(default: str, tooltip: str) -> io.String.Input:
    return io.String.Input("filename", default=default, tooltip=tooltip)


SAVE_TOOLTIP = ("File name under ComfyUI's output folder; an existing file of the name is replaced if it is one of "
                "this kind, else refused.")
LOAD_TOOLTIP = "Name under models/vp2p or the output folder."


class SaveResult(io.ComfyNode):
    """Save node pattern: one result object on ``INPUT``, written with its own ``save`` under ``output/``."""

    NODE_ID = DISPLAY_NAME = DESCRIPTION_TEXT = DEFAULT_FILE = LOADER = KIND = ""
    INPUT: io.Input = None

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY_NAME, category=CATEGORY, description=cls.DESCRIPTION_TEXT,
            inputs=[cls.INPUT, _filename(cls.DEFAULT_FILE, SAVE_TOOLTIP)],
            outputs=[io.String.Output("saved_filename", display_name="filename",
                                      tooltip=f"The name to give {cls.LOADER}.")],
            is_output_node=True,
        )

    @classmethod
    def result(cls, value):
        """The object to save, from the input (refuse what cannot be saved)."""
        return value

    @classmethod
    def execute(cls, filename: str, **inputs) -> io.NodeOutput:
        return _save(cls.result(inputs[cls.INPUT.id]), filename, cls.KIND)


class LoadResult(io.ComfyNode):
    """Load node pattern: a file of ours from models/vp2p or output/, checked against the model and the clip."""

    NODE_ID = DISPLAY_NAME = DESCRIPTION_TEXT = DEFAULT_FILE = ""
    MODEL_TOOLTIP = LATENT_TOOLTIP = ""
    OUTPUT: io.Output = None

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY_NAME, category=CATEGORY, description=cls.DESCRIPTION_TEXT,
            inputs=[VP2PModelIO.Input("vp2p_model", tooltip=cls.MODEL_TOOLTIP),
                    _filename(cls.DEFAULT_FILE, LOAD_TOOLTIP),
                    io.Latent.Input("latent", optional=True, tooltip=cls.LATENT_TOOLTIP)],
            outputs=[cls.OUTPUT],
        )

    @classmethod
    def fingerprint_inputs(cls, filename: str = "", **_) -> str:
        return _file_state(filename)

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, filename: str, latent=None) -> io.NodeOutput:
        path = files.load_path(filename, "filename")
        return io.NodeOutput(cls.load(path, vp2p_model, latent, what=f"{cls.KIND} file {filename!r}"))


class SaveVP2PDelta(SaveResult):
    NODE_ID, DISPLAY_NAME, KIND = "SaveVP2PDelta", "Save Tuned Delta (Video-P2P)", "delta"
    DESCRIPTION_TEXT = "Saves the tuned delta of a video model (safetensors) to re-edit later without tuning again."
    DEFAULT_FILE, LOADER = "vp2p/clip.delta.safetensors", "LoadVP2PDelta"
    INPUT = VP2PModelIO.Input("vp2p_model", tooltip="A tuned video model (from OneShotTune).")

    @classmethod
    def result(cls, value: VP2PModel) -> Delta:
        if value.delta is None:
            raise VP2PInputError("vp2p_model: this model is not tuned; connect the output of OneShotTune")
        return value.delta


class LoadVP2PDelta(LoadResult):
    NODE_ID, DISPLAY_NAME, KIND = "LoadVP2PDelta", "Load Tuned Delta (Video-P2P)", "delta"
    DESCRIPTION_TEXT = ("Loads a saved tuned delta onto a video model of the same checkpoint; a delta made for "
                        "another checkpoint, clip length or (given the clip) clip is refused.")
    DEFAULT_FILE = SaveVP2PDelta.DEFAULT_FILE
    MODEL_TOOLTIP = "The untuned video model from InflateUNet (same checkpoint and LoRAs)."
    LATENT_TOOLTIP = "Optional: the clip, to check the delta was tuned on it (its frames, and their thumbnail)."
    OUTPUT = VP2PModelIO.Output("tuned_model", display_name="tuned_model", tooltip="The tuned video model.")

    @classmethod
    def load(cls, path, vp2p_model: VP2PModel, latent, what: str) -> VP2PModel:
        delta = Delta.load(path)
        vp2p_model.check_delta_fits(delta, what, latents=None if latent is None else vp2p_model.latents(latent))
        return vp2p_model.tuned(delta)


class SaveVP2PInversion(SaveResult):
    NODE_ID, DISPLAY_NAME, KIND = "SaveVP2PInversion", "Save Inversion (Video-P2P)", "inversion"
    DESCRIPTION_TEXT = "Saves an inversion (x_T, null embeddings, source trajectory) to edit the clip again later."
    DEFAULT_FILE, LOADER = "vp2p/clip.inversion.safetensors", "LoadVP2PInversion"
    INPUT = VP2PInversionIO.Input("inversion", tooltip="From NullTextVideoInvert.")


class LoadVP2PInversion(LoadResult):
    NODE_ID, DISPLAY_NAME, KIND = "LoadVP2PInversion", "Load Inversion (Video-P2P)", "inversion"
    DESCRIPTION_TEXT = ("Loads a saved inversion; one made with another model or tuning, or from a clip of another "
                        "length or size, is refused, and, when the clip's latent is connected, one made from another "
                        "clip.")
    DEFAULT_FILE = SaveVP2PInversion.DEFAULT_FILE
    MODEL_TOOLTIP = "The tuned video model the inversion was made with."
    LATENT_TOOLTIP = ("Optional: the clip's latents (encoded as they were for the inversion: after Normalise Light, "
                      "if it was used), to check the inversion was made from this clip: frame count, size and "
                      "content.")
    OUTPUT = VP2PInversionIO.Output("inversion", display_name="inversion",
                                    tooltip="The inversion, for VideoP2PSampler.")

    @classmethod
    def load(cls, path, vp2p_model: VP2PModel, latent, what: str) -> Inversion:
        inv = Inversion.load(path)
        inv.check_model(vp2p_model.fingerprints, what)
        vp2p_model.check_frames(inv.num_frames, what)
        if latent is not None:
            inv.check_latents(vp2p_model.latents(latent), what)
        return inv
