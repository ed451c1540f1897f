"""Building an image: the façade (:mod:`.pipeline`), one stage (:mod:`.stage`), its steps (:mod:`.steps`), and
what steps use (copier, addsources, imageconfig, history, stageroot, in-container mode).
"""
