"""Images and where they live: the image model, references, the blob store, OCI layouts, tarballs, the registry
(:mod:`snapfs.image.registry`) and the transports that read and write them (:mod:`.transports`).
"""
