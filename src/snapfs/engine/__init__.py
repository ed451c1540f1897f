"""The filesystem engine: walk a rootfs into a snapshot, diff two snapshots, write a diff as a layer, apply layers.

The hot loops live in the compiled kernel ``snapfs._fast`` (its pure-Python twin is :mod:`snapfs.engine._pure`);
:mod:`snapfs.engine.backend` picks one. Imports nothing of snapfs but :mod:`snapfs.errors` and :mod:`snapfs.limits`.
"""
