"""`snapfs snapshot`, `snapfs diff` and `snapfs apply`: the engine on the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from snapfs.errors import InputError, UsageError
from snapfs.limits import MAX_LAYER_BYTES, MAX_LAYER_ENTRIES


def register(sub) -> None:
    p = sub.add_parser("snapshot", help="record the state of a directory tree to a file")
    p.add_argument("root", help="directory to snapshot")
    p.add_argument("-o", "--output", required=True, help="snapshot file to write")
    _walk_options(p)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("diff", help="write the layer that turns OLD into NEW",
                       description="snapfs diff OLD NEW -o LAYER, or snapfs diff --from SNAPSHOT ROOT -o LAYER")
    p.add_argument("trees", nargs="+", metavar="DIR", help="OLD and NEW directories (or ROOT with --from)")
    p.add_argument("--from", dest="from_snapshot", metavar="SNAPSHOT", help="compare ROOT with a saved snapshot")
    p.add_argument("-o", "--output", required=True, help="layer file to write")
    p.add_argument("--compression", default="gzip", choices=("gzip", "zstd", "none"))
    p.add_argument("--level", type=int, default=None, help="compression level (gzip 0-9, zstd 1-22)")
    p.add_argument("--mode", default="full", choices=("full", "stat"),
                   help="full: stat first, content hashed where stat cannot decide; stat: stat fields only")
    p.add_argument("--reproducible", action="store_true",
                   help="clamp mtimes to SOURCE_DATE_EPOCH (0 when unset) for byte-identical layers")
    p.add_argument("--no-opaque", action="store_true", help="never write opaque whiteouts")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _walk_options(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("apply", help="extract layers onto a directory, honouring whiteouts")
    p.add_argument("paths", nargs="+", metavar="PATH", help="LAYER... DIR")
    p.add_argument("--max-bytes", type=_cap, default=None, metavar="N",
                   help="refuse a layer whose uncompressed size, sparse files at their full size, passes N bytes "
                        f"(default {MAX_LAYER_BYTES >> 30} GiB; 0: no cap)")
    p.add_argument("--max-entries", type=_cap, default=None, metavar="N",
                   help=f"refuse a layer with more than N entries (default {MAX_LAYER_ENTRIES}; 0: no cap)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apply)


def _walk_options(p) -> None:
    p.add_argument("--ignore-path", action="append", default=[], metavar="PATH",
                   help="path (relative to the root) to leave out, with its subtree; repeatable")
    p.add_argument("--cross-fs", action="store_true", help="descend into other filesystems mounted below")


def cmd_snapshot(args) -> int:
    from snapfs.engine.snapshot import save, take

    _need_dir(args.root)
    t0 = time.perf_counter()
    snap = take(args.root, one_fs=not args.cross_fs, ignore=args.ignore_path)
    save(snap, args.output)
    print(f"{len(snap)} entries, {len(snap.hashes)} hashed, {time.perf_counter() - t0:.2f}s -> {args.output}")
    return 0


def cmd_diff(args) -> int:
    from snapfs.engine.changes import diff
    from snapfs.engine.layer import source_date_epoch, write_layer
    from snapfs.engine.compress import check_compression
    from snapfs.engine.snapshot import load, take

    check_compression(args.compression, args.level)  # options before any work: a bad level must not cost a walk
    walk = {"one_fs": not args.cross_fs, "ignore": args.ignore_path}
    if args.from_snapshot:
        if len(args.trees) != 1:
            raise UsageError("with --from, give exactly one directory (the tree to compare)")
        _need_dir(args.trees[0])
        old = load(args.from_snapshot)
        new = take(args.trees[0], **walk)
    else:
        if len(args.trees) != 2:
            raise UsageError("give OLD and NEW directories (or --from SNAPSHOT ROOT)")
        for t in args.trees:
            _need_dir(t)
        old, new = take(args.trees[0], **walk), take(args.trees[1], **walk)
    t0 = time.perf_counter()
    d = diff(old, new, mode=args.mode)
    epoch = source_date_epoch()
    if args.reproducible and epoch is None:
        epoch = 0
    blob = write_layer(d, args.output, compression=args.compression, level=args.level, epoch=epoch,
                       opaque=not args.no_opaque)
    counts = d.counts()
    result = {"digest": blob.digest, "diff_id": blob.diff_id, "size": blob.size, "media_type": blob.media_type,
              "path": blob.path, **counts, "whiteouts": blob.whiteouts, "opaque_dirs": blob.opaque_dirs,
              "entries": blob.entries, "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(f"digest:   {blob.digest}\ndiff_id:  {blob.diff_id}\nsize:     {blob.size}\n"
              f"added: {counts['added']}  modified: {counts['modified']}  deleted: {counts['deleted']}")
    return 0


def cmd_apply(args) -> int:
    from snapfs.engine.apply import apply_layers

    if len(args.paths) < 2:
        raise UsageError("give one or more LAYER files and then the target DIR")
    *layers, target = args.paths
    for layer in layers:
        if not os.path.isfile(layer):
            raise InputError(f"{layer}: no such layer file")
    _need_dir(target)
    kw = {key: value or None for key, value in (("max_bytes", args.max_bytes), ("max_entries", args.max_entries))
          if value is not None}  # 0 lifts the cap
    stats = apply_layers(layers, target, **kw)
    if args.json:
        json.dump([{"layer": l, "entries": s.entries, "whiteouts": s.whiteouts, "bytes": s.bytes,
                    "diff_id": s.diff_id} for l, s in zip(layers, stats)], sys.stdout, indent=2)
        print()
    else:
        for layer, s in zip(layers, stats):
            print(f"{layer}: {s.entries} entries, {s.whiteouts} whiteouts, diff_id {s.diff_id}")
    return 0


def _cap(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def _need_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise InputError(f"{path}: not a directory" if os.path.exists(path) else f"{path}: no such directory")
