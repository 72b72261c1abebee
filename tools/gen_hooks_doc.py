"""Regenerate the per-hook sections of docs/hooks.md from core/qcore/hookspecs.py (the source of truth).

    python tools/gen_hooks_doc.py          # rewrite docs/hooks.md below the marker
    python tools/gen_hooks_doc.py --check  # exit 1 when docs/hooks.md is stale (tests/test_docs.py runs this)
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from qcore import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
MARKER = "<!-- generated from core/qcore/hookspecs.py by tools/gen_hooks_doc.py: edit the docstrings, not below -->"


def render() -> str:
    """One ``## name(args)`` section per hookspec, in source order."""
    specs = [f for f in vars(hookspecs).values() if hasattr(f, "qcore_spec")]
    specs.sort(key=lambda f: inspect.getsourcelines(f)[1])
    out = []
    for spec in specs:
        params = inspect.signature(spec).parameters
        doc = inspect.getdoc(spec) or ""
        body, _, fields = doc.partition("\n:param") if ":param" in doc else doc.partition("\n:returns:")
        fields = (":param" + fields) if ":param" in doc else (":returns:" + fields)
        kind = "firstresult: the first non-None result wins" if spec.qcore_spec.get("firstresult") else "every implementation is called"
        lines = [f"## {spec.__name__}({', '.join(params)})", "", f"*{kind}*", "", body.strip(), ""]
        for item in re.split(r"\n(?=:param |:returns:)", fields.strip()):
            item = " ".join(item.split())
            if item.startswith(":param "):
                name, _, text = item[len(":param "):].partition(":")
                lines.append(f"- `{name}`: {text.strip()}")
            elif item.startswith(":returns:"):
                lines.append(f"- returns: {item[len(':returns:'):].strip()}")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def main() -> int:
    text = DOC.read_text()
    head = text.split(MARKER)[0].rstrip() + "\n\n" + MARKER + "\n\n"
    new = head + render()
    if "--check" in sys.argv:
        return 0 if new == text else 1
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
