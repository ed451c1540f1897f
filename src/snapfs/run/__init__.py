"""RUN steps: the namespace sandbox (:mod:`.sandbox`, whose init process is :mod:`.sandbox_init`, confined by
:mod:`.confine`), the unisolated runner (:mod:`.direct`) and user lookup (:mod:`.users`).

Kept empty: the sandbox's init process imports :mod:`.sandbox_init` and must stay cheap to start.
"""
