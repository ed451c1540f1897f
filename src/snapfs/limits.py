"""Limits that several stages of the data flow enforce alike, so a tree one accepts the next does not refuse.

``MAX_DEPTH``: the deepest directory nesting snapfs walks, snapshots, writes into a layer or applies from one.
Real images stay far below it (Debian's deepest paths are ~20 levels); a deeper tree is refused with a clear
error instead of exhausting the stack, file descriptors or time.
"""
from __future__ import annotations

MAX_DEPTH = 512

# What one layer or context archive may write when applied or unpacked (the applier's and context extractor's
# defaults; `snapfs apply --max-bytes/--max-entries` changes them). Bytes are the uncompressed tar with every
# sparse file counted at its apparent size, so neither a compression bomb nor a sparse map claiming terabytes
# gets further. 16 GiB is above the largest layers of real images (CUDA and ML bases stay under ~10 GiB per
# layer) and about the free disk of a typical CI runner, so a bomb stops before it fills one.
MAX_LAYER_BYTES = 16 << 30
# Above the entries of any real layer (a full Debian has ~100k, large node_modules trees ~1M); a stream of tiny
# headers compresses to almost nothing and would otherwise exhaust the filesystem's inodes.
MAX_LAYER_ENTRIES = 4 << 20
# The headers of one entry (pax records, GNU long names, sparse maps): Go's archive/tar allows 1 MiB as well.
MAX_HEADER_BYTES = 1 << 20
