"""snapfs: a daemonless OCI image builder and its filesystem snapshot/diff/layer engine.

The engine as a library::

    import snapfs
    old = snapfs.take("rootfs")            # snapshot (save/load to keep it)
    ...                                     # change the tree
    d = snapfs.diff(old, snapfs.take("rootfs"))
    blob = snapfs.write_layer(d, "layer.tar.gz")
    snapfs.apply_layers(["layer.tar.gz"], "other-rootfs")
"""
__version__ = "0.1.0"

from .changes import Change, Diff, diff, diff_trees  # noqa: E402
from .errors import SnapfsError  # noqa: E402
from .layer import LayerBlob, write_layer  # noqa: E402
from .snapshot import Snapshot, load, save, take  # noqa: E402


def build(options=None, **kw):
    """Build an image: ``snapfs.build(BuildOptions(...))`` or ``snapfs.build(context=..., ...)``.

    Returns a ``BuildResult`` (digest, image, layers, per-step timings).
    """
    from .builder import BuildOptions, build as _build

    return _build(options if options is not None else BuildOptions(**kw))


def apply_layers(layers, root, **kw):
    """Extract layers in order onto ``root``; see ``snapfs.apply.apply_layers``."""
    from .apply import apply_layers as _apply

    return _apply(layers, root, **kw)


__all__ = ["Change", "Diff", "LayerBlob", "Snapshot", "SnapfsError", "apply_layers", "build", "diff", "diff_trees",
           "load", "save", "take", "write_layer"]
