"""snapfs: a daemonless OCI image builder and its filesystem snapshot/diff/layer engine.

The engine as a library::

    import snapfs
    old = snapfs.take("rootfs")            # snapshot (save/load to keep it)
    ...                                     # change the tree
    d = snapfs.diff(old, snapfs.take("rootfs"))
    blob = snapfs.write_layer(d, "layer.tar.gz")
    snapfs.apply_layers(["layer.tar.gz"], "other-rootfs")

Importing ``snapfs`` loads nothing else: each name below is imported on first use, so a process that needs one
subpackage (the RUN sandbox's init process imports :mod:`snapfs.run.sandbox_init`) does not pay for the kernel,
zstandard, isal or xxhash. The packages, one per stage of the data flow: :mod:`snapfs.frontend` (Dockerfile),
:mod:`snapfs.builder` (stages and steps), :mod:`snapfs.run` (RUN), :mod:`snapfs.context`, :mod:`snapfs.engine`
(snapshot, diff, layer, apply), :mod:`snapfs.image` (image model, registry, outputs) and :mod:`snapfs.cli`.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Change": "snapfs.engine.changes", "Diff": "snapfs.engine.changes", "diff": "snapfs.engine.changes",
    "diff_trees": "snapfs.engine.changes",
    "LayerBlob": "snapfs.engine.layer", "write_layer": "snapfs.engine.layer",
    "Snapshot": "snapfs.engine.snapshot", "load": "snapfs.engine.snapshot", "save": "snapfs.engine.snapshot",
    "take": "snapfs.engine.snapshot",
    "SnapfsError": "snapfs.errors",
    # the builder's options, stable at the top level whatever package holds them
    "BuildOptions": "snapfs.builder.pipeline", "BuildResult": "snapfs.builder.pipeline",
    "OutputOptions": "snapfs.image.transports",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'snapfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def build(options=None, **kw):
    """Build an image: ``snapfs.build(BuildOptions(...))`` or ``snapfs.build(context=..., ...)``.

    ``BuildOptions`` is :class:`snapfs.builder.pipeline.BuildOptions`. Returns a ``BuildResult`` (digest, image,
    layers, per-step timings).
    """
    from snapfs.builder.pipeline import BuildOptions, build as _build

    return _build(options if options is not None else BuildOptions(**kw))


def apply_layers(layers, root, **kw):
    """Extract layers in order onto ``root``; see :func:`snapfs.engine.apply.apply_layers`."""
    from snapfs.engine.apply import apply_layers as _apply

    return _apply(layers, root, **kw)


__all__ = ["BuildOptions", "BuildResult", "Change", "Diff", "LayerBlob", "OutputOptions", "Snapshot", "SnapfsError",
           "apply_layers", "build", "diff", "diff_trees", "load", "save", "take", "write_layer"]
