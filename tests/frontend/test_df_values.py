"""Typed values inside instructions: chmod, durations, ports, signals, mounts, sizes."""
from __future__ import annotations

import pytest

from snapfs.errors import DockerfileError
from snapfs.frontend.values import (Invalid, Mount, Port, parse_chmod, parse_duration, parse_mount, parse_port,
                                    parse_ram_bytes, parse_signal)


@pytest.mark.parametrize(("spec", "mode", "is_dir", "expected"), [
    ("755", 0o600, False, 0o755),
    ("0644", 0o777, True, 0o644),
    ("4755", 0, False, 0o4755),
    ("u+x", 0o644, False, 0o744),
    ("go-w", 0o666, False, 0o644),
    ("a=r", 0o777, False, 0o444),
    ("+x", 0o644, False, 0o755),
    ("u=rwx,go=rx", 0o000, False, 0o755),
    ("a+X", 0o644, False, 0o644),  # X: only directories or files that are already executable
    ("a+X", 0o644, True, 0o755),
    ("a+X", 0o744, False, 0o755),
    ("g=u", 0o740, False, 0o770),
    ("u+s", 0o755, False, 0o4755),
    ("+t", 0o777, True, 0o1777),
    ("o=", 0o777, False, 0o770),
])
def test_chmod_apply(spec: str, mode: int, is_dir: bool, expected: int):
    assert parse_chmod(spec).apply(mode, is_dir=is_dir) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("999", "invalid chmod parameter: 999 (expected octal or symbolic mode like u+x,g-w)"),
    ("17777", "invalid chmod parameter: 17777 (octal mode above 7777)"),
    ("u+q", "invalid chmod parameter: u+q (expected octal or symbolic mode like u+x,g-w)"),
    ("", "invalid chmod parameter:  (expected octal or symbolic mode like u+x,g-w)"),
])
def test_chmod_errors(spec: str, message: str):
    with pytest.raises(Invalid) as info:
        parse_chmod(spec)
    assert info.value.detail == message


@pytest.mark.parametrize(("text", "ns"), [
    ("0", 0), ("1s", 10**9), ("1.5s", 1_500_000_000), ("300ms", 300_000_000), ("1h30m", 5_400 * 10**9),
    ("2us", 2_000), ("2µs", 2_000), ("10ns", 10), (".5m", 30 * 10**9), ("-1s", -(10**9)), ("1m1s1ms", 61_001_000_000),
])
def test_durations_like_go(text: str, ns: int):
    assert parse_duration(text) == ns


@pytest.mark.parametrize(("text", "message"), [
    ("5", 'time: missing unit in duration "5"'),
    ("1d", 'time: unknown unit "d" in duration "1d"'),
    ("", 'time: invalid duration ""'),
    (".s", 'time: invalid duration ".s"'),
    ("s", 'time: invalid duration "s"'),
])
def test_duration_errors(text: str, message: str):
    with pytest.raises(Invalid) as info:
        parse_duration(text)
    assert info.value.detail == message


def test_ports():
    assert parse_port("80") == Port(80, 80, "tcp")
    assert parse_port("53/UDP") == Port(53, 53, "udp")
    assert parse_port("8000-8002/sctp").keys() == ("8000/sctp", "8001/sctp", "8002/sctp")
    for bad, message in [("70000", 'invalid port "70000": out of range 0-65535'),
                         ("90-80", 'invalid port range "90-80": end is below start'),
                         ("http", 'invalid port "http" (expected PORT[-PORT][/tcp|udp|sctp])')]:
        with pytest.raises(Invalid) as info:
            parse_port(bad)
        assert info.value.detail == message


def test_signals():
    assert [parse_signal(s) for s in ("SIGTERM", "term", "9", "SIGRTMIN+3")] == ["SIGTERM", "term", "9", "SIGRTMIN+3"]
    for bad in ("0", "SIGNOPE", "-1", ""):
        with pytest.raises(Invalid) as info:
            parse_signal(bad)
        assert info.value.detail == f"invalid signal: {bad}"


def test_ram_bytes():
    assert parse_ram_bytes("64m") == 64 << 20
    assert parse_ram_bytes("1g") == 1 << 30
    assert parse_ram_bytes("512KiB") == 512 << 10
    assert parse_ram_bytes("100") == 100


def test_mount_defaults_follow_buildkit():
    assert parse_mount("type=cache").target == ""  # BuildKit mounts it at the working directory
    assert parse_mount("target=/src") == Mount(type="bind", target="/src", readonly=True)
    assert parse_mount("type=cache,target=/c").readonly is False
    assert parse_mount("type=tmpfs,target=/t,size=1g").size == 1 << 30
    assert parse_mount("type=bind,target=/x,rw").readonly is False
    assert parse_mount("type=bind,target=/x,readonly=false").readonly is False
    assert parse_mount("type=ssh").readonly is True
    secret = parse_mount("type=secret,id=tok,env=TOKEN,required")
    assert (secret.id, secret.env, secret.required, secret.target) == ("tok", "TOKEN", True, "")
    cache = parse_mount("type=cache,target=/c,sharing=LOCKED,mode=0700,uid=1000,gid=1000,from=base,source=/s")
    assert (cache.sharing, cache.mode, cache.uid, cache.gid, cache.from_, cache.source) == \
        ("locked", 0o700, 1000, 1000, "base", "/s")


def test_mount_quoted_csv_fields():
    assert parse_mount('"type=cache","target=/a,b","id=x""y"') == Mount(type="cache", target="/a,b", id='x"y',
                                                                          readonly=False)


def test_mount_expansion_applies_to_values_but_not_from():
    expand = {"$DIR": "/expanded"}.get
    m = parse_mount("type=cache,target=$DIR,id=$DIR,from=base", expand=lambda v: expand(v, v))
    assert (m.target, m.id, m.from_) == ("/expanded", "/expanded", "base")


@pytest.mark.parametrize(("spec", "message"), [
    ("type=nfs,target=/x", 'unsupported mount type "nfs"'),
    ("type=bind,target=/x,color=red", "unexpected key 'color' in 'color=red'"),
    ("type=bind,target=/x,mode=0755", 'mode not allowed for "bind" type mounts'),
    ("type=bind,target=/x,size=1m", "unexpected key 'size' for mount type 'bind'"),
    ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
    ("type=cache,target=/x,sharing=weird", 'unsupported sharing value "weird"'),
    ("type=cache,target=/x,mode=999", "invalid value 999 for mode"),
    ("type=cache,target=/x,uid=-1", "invalid value -1 for uid"),
    ("type=cache,target=/x,ro=maybe", "invalid value for ro: maybe"),
    ("type=cache,target=/x,bogus", "invalid field 'bogus' must be a key=value pair"),
    ("type=cache,target=/x,required", "unexpected key 'required' for mount type 'cache'"),
    ("type=secret", "one of source, target required"),
    ("type=secret,id=a,from=stage", "secret mount should not have a from"),
    ("from=$X,target=/x", "'from' doesn't support variable expansion, define alias stage instead"),
    ('type="cache', 'failed to parse csv mounts: bare " in non-quoted-field'),
    ('"type=cache', 'failed to parse csv mounts: extraneous or missing " in quoted-field'),
    ('"type=cache"x', 'failed to parse csv mounts: extraneous or missing " in quoted-field'),
])
def test_mount_errors(spec: str, message: str):
    with pytest.raises(Invalid) as info:
        parse_mount(spec)
    assert info.value.detail == message


def test_invalid_is_a_dockerfile_error():
    assert issubclass(Invalid, DockerfileError)
