"""Run with ComfyUI's python: the context windows the node builds from comfy.context_windows against the core's
own schedule and weights (vp2p_core.context).

    python check_context.py COMFYUI_DIR REPO

Prints one JSON line: how many (clip length, schedule, fuse method) cases were compared, the ones that differ,
the ones where ComfyUI itself fails (its overlap-linear weights on a window shorter than the overlap), and whether ComfyUI's standard_uniform windows cover every frame and shift from step to step.
"""
import json
import sys

import under_test


def main(comfy_dir, repo):
    module = under_test.load(comfy_dir, repo)
    nodes_context = module("nodes.nodes_context")
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions

    compared, mismatches, comfy_errors = 0, [], []
    for frames, length, overlap in [(10, 4, 1), (20, 16, 4), (48, 16, 4), (130, 16, 4), (33, 8, 0), (8, 16, 4)]:
        for schedule in ("standard_static", "batched"):
            for fuse in ("pyramid", "flat", "overlap-linear", "relative"):
                o = ContextOptions(context_length=length, context_overlap=overlap, context_schedule=schedule,
                                   fuse_method=fuse)
                ours = ContextWindows(o).windows(frames)
                try:
                    theirs = nodes_context.comfy_context_windows(o).windows(frames)
                except RuntimeError as e:  # overlap-linear on batched's shorter last window: a ComfyUI error
                    comfy_errors.append([frames, length, overlap, schedule, fuse, str(e)[:80]])
                    continue
                compared += 1
                same = [w.frames for w in ours] == [w.frames for w in theirs] and all(
                    len(a.weights) == len(b.weights) and all(abs(x - y) <= 1e-6 * max(1.0, abs(x))
                                                             for x, y in zip(a.weights, b.weights))
                    for a, b in zip(ours, theirs))
                if not same:
                    mismatches.append([frames, length, overlap, schedule, fuse])
    o = ContextOptions(context_length=16, context_overlap=4, context_schedule="standard_uniform")
    cw = nodes_context.comfy_context_windows(o)
    steps = [[w.frames for w in cw.windows(64, step=i)] for i in range(4)]
    covers = all(set(range(64)) <= {f for w in s for f in w} for s in steps)
    print(json.dumps({"compared": compared, "mismatches": mismatches, "comfy_errors": comfy_errors, "uniform_covers": covers,
                      "uniform_shifts": steps[0] != steps[1]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
