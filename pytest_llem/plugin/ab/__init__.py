"""A/B mode: base revision and working tree measured in one job, windows interleaved ABBA.

- `turns`: the seam the experiment lifecycle calls before each window.
- `protocol`: the head (coordinator) and base (follower) sides of the window-by-window
  conversation over one socket.
- `worktree`: the base revision as a git worktree under the tool's own directory.
- `worker`: the base process, a pytest session in the worktree run test by test on command.
- `session`: the head side's pytest wiring (`--llem-ab REF`).
"""
