"""RUN end to end, as an attacker would write it: the step cannot reconfigure the host kernel or make devices."""
from __future__ import annotations

import os

CORE_PATTERN = "/proc/sys/kernel/core_pattern"


def test_run_cannot_set_core_pattern_or_make_block_devices(run_build):
    with open(CORE_PATTERN) as f:
        before = f.read()
    try:
        b = run_build("FROM busybox\n"
                      f"RUN (echo '|/pwn %p' > {CORE_PATTERN} && echo wrote || echo refused) > /result; "
                      "(mknod /loop0 b 7 0 && echo made || echo refused) >> /result; "
                      "(unshare -U true 2>/unshare.err && echo unshared || echo refused) >> /result\n")
        with open(CORE_PATTERN) as f:
            assert f.read() == before
    finally:
        with open(CORE_PATTERN) as f:
            if f.read() != before:  # never leave the host changed, even when the fix regresses
                with open(CORE_PATTERN, "w") as w:
                    w.write(before)
    assert b.read("/result") == b"refused\nrefused\nrefused\n"
    assert b"Operation not permitted" in b.read("/unshare.err")  # the seccomp filter, not a missing applet
    assert not os.path.lexists(b.path("/loop0"))
