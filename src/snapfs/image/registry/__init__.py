"""The registry: the HTTP client (:mod:`.client`, the only one for registry traffic; :mod:`.cloud` makes ACR's
token exchange itself), auth challenges (:mod:`.auth`), credentials (:mod:`.credentials`, with the clouds'
built-in providers in :mod:`.cloud`), and pulling and pushing images (:mod:`.pull`, :mod:`.push`), which build on
the client.
"""
