#!/usr/bin/env python3
"""Regenerates every committed reference fixture under tests/fixtures/.

Run from the repository root inside the reference environment (DEVELOPERS.md):
    /path/to/venv/bin/python tools/make_fixtures.py [area ...]
Areas: tokenizer, image, checkpoint (default: all). CI never runs this; it only reads
what this wrote and was committed.
"""
import subprocess
import sys
from pathlib import Path

AREAS = ["tokenizer", "image", "checkpoint", "vision", "text", "pipeline", "train", "lora", "grpo",
         "grpo_train"]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    areas = sys.argv[1:] or AREAS
    for area in areas:
        if area not in AREAS:
            print(f"unknown area {area!r}; choose from {AREAS}", file=sys.stderr)
            return 2
        script = root / "tools" / f"fixtures_{area}.py"
        print(f"== {area}: {script.name}", flush=True)
        subprocess.run([sys.executable, str(script)], cwd=root, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
