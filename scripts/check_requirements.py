"""Check that requirements.txt and requirements-dev.txt say what pyproject.toml says.

pyproject.toml's [project] dependencies must equal requirements.txt (what the node needs inside ComfyUI;
the registry and ComfyUI-Manager read one or the other), and its optional `dev` dependencies must equal
requirements-dev.txt (tests and the small-world demo). Order, case and spaces do not matter.

    python scripts/check_requirements.py        # exit 0: they agree; 1: it prints the differences

Needs Python >= 3.11 (tomllib) or the tomli package; without either it says so and exits 0.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def norm(req: str) -> str:
    req = re.sub(r"\s+", "", req)
    name, rest = re.match(r"([A-Za-z0-9._-]+)(.*)", req).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + ",".join(sorted(rest.split(",")))


def read_txt(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {norm(line) for line in lines if line and not line.startswith("-")}


def main() -> int:
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            print("check_requirements: no tomllib (Python < 3.11) or tomli here; not checked")
            return 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pairs = [
        ("requirements.txt", "[project] dependencies", project.get("dependencies", [])),
        ("requirements-dev.txt", "[project.optional-dependencies] dev",
         project.get("optional-dependencies", {}).get("dev", [])),
    ]
    ok = True
    for txt, where, listed in pairs:
        a, b = read_txt(ROOT / txt), {norm(r) for r in listed}
        for r in sorted(a - b):
            print(f"check_requirements: {txt} has {r}, pyproject.toml's {where} does not")
        for r in sorted(b - a):
            print(f"check_requirements: pyproject.toml's {where} has {r}, {txt} does not")
        ok &= a == b
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
