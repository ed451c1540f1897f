"""The build context: resolved from its spec (:mod:`.resolve`), downloaded (:mod:`.fetch`), cloned (:mod:`.git`),
and unpacked inside a directory it cannot escape (:mod:`.extract`).
"""
