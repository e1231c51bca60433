"""bench/peak_memory.py measures in a fresh process and reports what the step added."""
import json

from bench import peak_memory


def test_peak_memory_reports_the_steps_own_peak(capsys):
    """A tiny refine (1 frame of 32 px) adds next to nothing: the figure is the step's, not the process's (a
    ru_maxrss reading carried the parent's RSS across the exec)."""
    assert peak_memory.main(["--what", "refine", "--frames", "1", "--size", "32", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["what"] == "refine" and len(out["peak_mib"]) == 1 and 0.0 <= out["peak_mib"][0] < 50.0
