"""The Dockerfile frontend: syntax (:mod:`.syntax`), typed instructions (:mod:`.instructions`, :mod:`.values`),
shell-word expansion (:mod:`.shellwords`), ``.dockerignore`` and the stage plan (:mod:`.plan`). No IO; imports
nothing of snapfs but :mod:`snapfs.errors`.
"""
