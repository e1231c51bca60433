"""Attention Edit: the Prompt-to-Prompt edit plan (vp2p_core.control)."""
from __future__ import annotations

from comfy_api.latest import io

from vp2p_core import EditOptions, build_edit_plan

from .schema import CATEGORY, DEFAULT_PROMPT, VP2PEditIO, widgets
from .text import encode_text, encode_texts, tokenizer_from_clip
from .types import VP2PEdit

EDIT_WIDGETS = ["edit_mode", "cross_replace", "self_replace", "self_replace_on", "blend_words", "blend_target_words",
                "reweight_words", "reweight_values", "mask_threshold", "blend_start", "blend_dilation", "blend_smoothing",
                "blend_region", "blend_from"]


class AttentionEditController(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionEditController",
            display_name="Attention Edit (Video-P2P)",
            category=CATEGORY,
            description="Describes the edit: source and target prompts and how the target's attention follows the "
                        "source's (word swap, refinement, reweighting, local blend). Cheap; change it and re-run "
                        "only the sampler.",
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes the prompts and finds each word's "
                                              "tokens."),
                io.String.Input("source_prompt", multiline=True, default=DEFAULT_PROMPT,
                                tooltip="The prompt used for inversion."),
                io.String.Input("target_prompts", multiline=True, default="a cat is jumping on the grass",
                                tooltip="The edited prompt; one per line to make several edits at once."),
                *widgets(EditOptions, EDIT_WIDGETS),
            ],
            outputs=[VP2PEditIO.Output("edit", display_name="edit", tooltip="The edit for VideoP2PSampler.")],
        )

    @classmethod
    def execute(cls, clip, source_prompt: str, target_prompts: str, **widget_values) -> io.NodeOutput:
        options = EditOptions.from_values(widget_values)
        tok = tokenizer_from_clip(clip)
        plan = build_edit_plan(tok, source_prompt=source_prompt, target_prompts=target_prompts, options=options)
        plan.source_embedding = encode_text(clip, plan.source_prompt, "source_prompt")
        plan.target_embeddings = encode_texts(clip, plan.target_prompts, "target_prompts")
        plan.empty_embedding = encode_text(clip, "", "empty prompt")
        labels = [tok.labels(p) for p in [plan.source_prompt] + plan.target_prompts]
        return io.NodeOutput(VP2PEdit(plan=plan, token_labels=labels))
