"""``python -m sparsebench.reproduce check [report=docs/claims.md]``: whether a report is current.

A report is current for HEAD when it was made from a clean checkout at a commit whose tree
differs from HEAD's only in report files (the report itself, its plot), and every claim it
covers still has the version and digest it was made from (and no claim file was added).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sparsebench.config.resources import CLAIMS_DIR
from sparsebench.errors import ConfigError

REPORT_FILES = ("docs/claims.md", "docs/claims.png")


def git(repo: Path, *args: str) -> tuple[int, str]:
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)
    return out.returncode, out.stdout.strip()


def commit_of(repo: Path) -> tuple[str, bool]:
    """(HEAD's sha, whether tracked files have uncommitted changes), or ('unknown', True)."""
    code, sha = git(repo, "rev-parse", "HEAD")
    if code != 0:
        return "unknown", True
    _, status = git(repo, "status", "--porcelain", "--untracked-files=no")
    return sha, bool(status)


def problems(report: Path, repo: Path, claims_dir: Path = CLAIMS_DIR) -> list[str]:
    """Why ``report`` is not current for ``repo``'s HEAD (empty: it is)."""
    from sparsebench.reproduce.claims import load_claim
    from sparsebench.reproduce.report import meta_of

    try:
        meta = meta_of(report.read_text())
    except OSError as exc:
        return [f"{report} cannot be read ({exc.strerror})"]
    if meta is None:
        return [f"{report} records no commit or claim digests (made before they were recorded)"]
    out = []
    made = str(meta.get("commit"))
    if meta.get("dirty"):
        out.append(f"it was made from uncommitted changes on top of {made[:12]}")
    code, changed = git(repo, "diff", "--name-only", made, "HEAD")
    if code != 0:
        out.append(f"its commit {made[:12]} is not in this repository")
    else:
        files = [f for f in changed.splitlines() if f and f not in REPORT_FILES]
        if files:
            shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
            out.append(f"{len(files)} file(s) changed since {made[:12]}: {shown}")
    recorded = meta.get("claims") or {}
    for name, entry in sorted(recorded.items()):
        path = claims_dir / f"{name}.yaml"
        if not path.is_file():
            out.append(f"claim {name} no longer exists")
            continue
        try:
            claim = load_claim(str(path))
        except ConfigError as exc:
            out.append(f"claim {name} does not load ({exc})")
            continue
        if (claim.version, claim.digest) != (entry.get("version"), entry.get("digest")):
            out.append(
                f"claim {name} is version {claim.version} (digest {claim.digest}), the report's "
                f"is version {entry.get('version')} (digest {entry.get('digest')})"
            )
    if meta.get("claim", "all") == "all":
        missing = sorted({p.stem for p in claims_dir.glob("*.yaml")} - set(recorded))
        if missing:
            out.append(f"claim(s) {', '.join(missing)} are not in it")
    return out
