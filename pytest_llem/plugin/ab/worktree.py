"""The base revision as a git worktree under the tool's own directory.

`git worktree add --detach .llem/ab/<commit>-<pid>/worktree REF`, removed again with
`git worktree remove --force` when the session ends. Nothing outside that directory is
touched: the user's working tree, index, branches and stash stay as they were.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class WorktreeError(Exception):
    """A one-line reason why the base revision could not be checked out."""


def _git(cwd: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False, timeout=300
        )
    except FileNotFoundError:
        raise WorktreeError("git is not installed; --llem-ab needs git on PATH") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise WorktreeError(detail[-1] if detail else f"git {args[0]} exited {done.returncode}")
    return done.stdout.strip()


def repository_root(start: Path) -> Path:
    try:
        return Path(_git(start, "rev-parse", "--show-toplevel")).resolve()
    except WorktreeError:
        raise WorktreeError(
            f"{start} is not inside a git repository; --llem-ab compares git revisions"
        ) from None


@dataclass
class Worktree:
    repo_root: Path
    ref: str
    commit: str
    path: Path

    def remove(self) -> None:
        """Remove the worktree and its directory; never raises (called on every exit path)."""
        with contextlib.suppress(WorktreeError):
            _git(self.repo_root, "worktree", "remove", "--force", str(self.path))
        shutil.rmtree(self.path.parent, ignore_errors=True)
        with contextlib.suppress(WorktreeError):
            _git(self.repo_root, "worktree", "prune")


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def remove_stale(repo_root: Path, tool_dir: Path) -> list[Path]:
    """Remove the worktrees under `tool_dir/ab/` whose session is dead (`<commit>-<pid>`: the
    pid that made it). A head that was killed before it could clean up - an xdist worker the
    controller stopped after its exit timeout on a loaded machine, a SIGKILLed session - leaves
    its checkout behind; the next A/B session, and an xdist controller after its workers, sweep
    it. Never raises; the removed paths."""
    removed = []
    for path in sorted((tool_dir / "ab").glob("*-*/worktree")):
        pid = path.parent.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            Worktree(repo_root, "", "", path).remove()
            removed.append(path)
    return removed


def create(repo_root: Path, ref: str, tool_dir: Path) -> Worktree:
    """Check out `ref` (any commit-ish: a branch, origin/main, a sha) detached under
    `tool_dir/ab/`. Raises WorktreeError with git's own one-line reason."""
    try:
        commit = _git(repo_root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except WorktreeError:
        raise WorktreeError(
            f"{ref!r} is not a commit in {repo_root} (fetch it first, e.g. git fetch origin main, "
            "with fetch-depth: 0 on actions/checkout)"
        ) from None
    path = tool_dir / "ab" / f"{commit[:12]}-{os.getpid()}" / "worktree"
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(repo_root, "worktree", "add", "--detach", "--force", str(path), commit)
    return Worktree(repo_root, ref, commit, path)
