"""The registry: the HTTP client (:mod:`.client`, the only one), auth challenges (:mod:`.auth`), credentials,
and pulling and pushing images (:mod:`.pull`, :mod:`.push`), which build on the client.
"""
