"""Limits that several stages of the data flow enforce alike, so a tree one accepts the next does not refuse.

``MAX_DEPTH``: the deepest directory nesting snapfs walks, snapshots, writes into a layer or applies from one.
Real images stay far below it (Debian's deepest paths are ~20 levels); a deeper tree is refused with a clear
error instead of exhausting the stack, file descriptors or time.
"""
from __future__ import annotations

MAX_DEPTH = 512
