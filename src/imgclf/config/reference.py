"""Write the configuration reference (``docs/configuration.md``) from ``variables.toml``.

``python -m imgclf.config.reference`` (``make docs`` runs it) rewrites the page;
``--check`` exits 1 when the page is stale (the tests run it too).
"""

from __future__ import annotations

import sys

from imgclf.config.catalogue import GROUPS, PROJECT_ROOT, VARIABLES, Variable

PAGE = PROJECT_ROOT / "docs" / "configuration.md"

HEADER = """# Configuration

Every setting is an environment variable, read when it is needed (a bad value stops with an
error that names the variable). `make run` and the stack read `.env` too. A secret (kind
*secret*) may instead come from a file: `NAME_FILE=/path` (compose and Kubernetes mount
secrets as files, so that neither `inspect` nor `/proc/*/environ` shows them).

This page is generated from `src/imgclf/config/variables.toml` by
`python -m imgclf.config.reference` (`make docs`); a test fails when it is stale. The
tools' own variables (`make bench*`, `make loadtest*`, `make stack-up`) are on
[Development](development.md) and [Deploying](deployment.md).
"""


def _default(variable: Variable) -> str:
    if variable.shown:
        return variable.shown
    default = variable.default
    if variable.kind == "path":
        return f"`{default.relative_to(PROJECT_ROOT)}/`" if default else "none"
    if variable.kind == "flag":
        return f"`{int(default)}`"
    return f"`{default}`" if default not in ("", None) else "none"


def _allowed(variable: Variable) -> str:
    if variable.choices:
        return ", ".join(f"`{choice}`" for choice in variable.choices)
    if variable.kind == "flag":
        return "`0`, `1`"
    if variable.kind in ("int", "float"):
        return f"{_number(variable.low)} to {_number(variable.high)}"
    return variable.kind


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def render() -> str:
    lines = [HEADER]
    for group, title in GROUPS.items():
        lines += [f"## {title}", "", "| Variable | Default | Allowed | What it does |"]
        lines.append("|---|---|---|---|")
        for variable in (v for v in VARIABLES if v.group == group):
            row = (f"`{variable.name}`", _default(variable), _allowed(variable), variable.help)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    page = render()
    if "--check" in argv:
        stale = not PAGE.exists() or PAGE.read_text() != page
        if stale:
            print(f"{PAGE} is stale: run python -m imgclf.config.reference", file=sys.stderr)
        return int(stale)
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(PROJECT_ROOT)} ({len(VARIABLES)} variables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
