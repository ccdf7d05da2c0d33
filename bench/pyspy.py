"""What the benchmarks share for profiling with py-spy: finding it, recording a child for a while, and
summarizing the raw (folded) samples by the bench's own rules."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

NOT_FOUND = "py-spy not found (pip install py-spy in the virtualenv)"


def exe() -> str | None:
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def record(pid: int, seconds: float, folded: Path) -> str | None:
    """Sample ``pid`` for ``seconds`` (whole, at least 1) without pausing it, raw samples to ``folded``;
    an error message, or None."""
    binary = exe()
    if binary is None:
        return NOT_FOUND
    folded.parent.mkdir(parents=True, exist_ok=True)
    folded.unlink(missing_ok=True)
    seconds = max(1, round(seconds))
    cmd = [binary, "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw", "-o", str(folded),
           "--nonblocking"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0 or not folded.exists():
        lines = (done.stderr or done.stdout or "no output").strip().splitlines()
        more = f" ... {lines[-1][:200]}" if len(lines) > 1 else ""
        return f"py-spy failed: {lines[0][:300] if lines else ''}{more}"
    return None


def summarize(
    folded: str, rules: tuple[tuple[str, tuple[str, ...]], ...], *, top_lines: int = 0, top_functions: int = 0
) -> dict[str, Any]:
    """Shares of the samples: by category (the first rule matching from the leaf up wins, "event loop
    and other" otherwise), the ``top_lines`` leaf frames, the ``top_functions`` functions (inclusive:
    once per sample)."""
    categories: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    samples = 0
    for row in folded.splitlines():
        stack, _, n = row.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames, count = stack.split(";"), int(n)
        samples += count
        lines[frames[-1]] += count
        for name in {frame.split(":")[0] + ")" if ":" in frame else frame for frame in frames}:
            functions[name] += count
        for frame in reversed(frames):
            label = next((lbl for lbl, keys in rules if any(k in frame for k in keys)), None)
            if label is not None:
                categories[label] += count
                break
        else:
            categories["event loop and other"] += count
    if not samples:
        return {"error": "no samples"}
    out: dict[str, Any] = {
        "samples": samples,
        "categories": {k: round(v / samples, 4) for k, v in categories.most_common()},
    }
    if top_lines:
        out["top_lines"] = {k: round(v / samples, 4) for k, v in lines.most_common(top_lines)}
    if top_functions:
        out["top_functions_inclusive"] = {
            k: round(v / samples, 4) for k, v in functions.most_common(top_functions)
        }
    return out
