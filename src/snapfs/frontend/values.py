"""Parsers for the small value languages inside instructions: ports, chmod modes, Go durations, signals,
checksums and ``RUN --mount`` specs. Pure functions returning frozen values; a bad value raises ``Invalid``
(a ``DockerfileError`` without a location, which the caller attaches)."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from snapfs.errors import DockerfileError, SnapfsError


class Invalid(DockerfileError):
    """A value that does not parse; ``offset`` is a hint for the column within the instruction."""

    def __init__(self, detail: str, *, offset: int = 0) -> None:
        self.offset = offset
        SnapfsError.__init__(self, detail)  # no location yet: the instruction parser adds it


# -- EXPOSE -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Port:
    start: int
    end: int
    protocol: str  # tcp | udp | sctp

    def keys(self) -> tuple[str, ...]:
        """The image config's ``ExposedPorts`` keys (``80/tcp``), one per port of a range."""
        return tuple(f"{p}/{self.protocol}" for p in range(self.start, self.end + 1))


_PORT_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?(?:/([A-Za-z]+))?")


def parse_port(text: str) -> Port:
    m = _PORT_RE.fullmatch(text)
    if not m:
        raise Invalid(f"invalid port \"{text}\" (expected PORT[-PORT][/tcp|udp|sctp])")
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else start
    proto = (m.group(3) or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise Invalid(f"invalid protocol \"{m.group(3)}\" in port \"{text}\"")
    if start > 65535 or end > 65535:
        raise Invalid(f"invalid port \"{text}\": out of range 0-65535")
    if end < start:
        raise Invalid(f"invalid port range \"{text}\": end is below start")
    return Port(start, end, proto)


# -- --chmod ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Chmod:
    """Octal (``0755``) or symbolic (``u=rwx,go+rX``) mode for COPY/ADD."""

    text: str
    octal: int | None
    clauses: tuple[tuple[str, str, str], ...] = ()  # (who, op, perms) with who in "ugoa", op in "+-="

    def apply(self, mode: int, *, is_dir: bool) -> int:
        """The permission bits a file of ``mode`` gets (``X`` sets execute on directories or executables)."""
        if self.octal is not None:
            return self.octal
        mode &= 0o7777
        for who, op, perms in self.clauses:
            bits = _perm_bits(who or "a", perms, mode, is_dir=is_dir)
            mask = _who_mask(who or "a")
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~mask) | bits
        return mode


_CLAUSE_RE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION_RE = re.compile(r"([-+=])([ugo]|[rwxXst]*)")


def parse_chmod(text: str) -> Chmod:
    if re.fullmatch(r"[0-7]+", text):
        value = int(text, 8)
        if value > 0o7777:
            raise Invalid(f"invalid chmod parameter: {text} (octal mode above 7777)")
        return Chmod(text, value)
    clauses = []
    for part in text.split(","):
        m = _CLAUSE_RE.fullmatch(part)
        if not m:
            raise Invalid(f"invalid chmod parameter: {text} (expected octal or symbolic mode like u+x,g-w)")
        for op, perms in _ACTION_RE.findall(m.group(2)):
            clauses.append((m.group(1), op, perms))
    return Chmod(text, None, tuple(clauses))


def _who_mask(who: str) -> int:
    mask = 0
    for w in who:
        mask |= {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}[w]
    return mask


def _perm_bits(who: str, perms: str, mode: int, *, is_dir: bool) -> int:
    if perms in ("u", "g", "o"):  # copy another class's bits
        shift = {"u": 6, "g": 3, "o": 0}[perms]
        rwx = (mode >> shift) & 7
        perms_bits = rwx << 6 | rwx << 3 | rwx
        return perms_bits & _who_mask(who) & 0o777
    rwx = 0
    special = 0
    for p in perms:
        if p == "r":
            rwx |= 4
        elif p == "w":
            rwx |= 2
        elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
            rwx |= 1
        elif p == "s":
            special |= 0o6000
        elif p == "t":
            special |= 0o1000
    bits = rwx << 6 | rwx << 3 | rwx | special
    return bits & _who_mask(who)


# -- HEALTHCHECK durations (Go's time.ParseDuration) --------------------------------------------------------------
_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_duration(text: str) -> int:
    """Nanoseconds; the syntax of Go's ``time.ParseDuration`` (``1h30m``, ``1.5s``, ``300ms``)."""
    body = text
    sign = 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise Invalid(f'time: invalid duration "{text}"')
    total = Decimal(0)
    pos = 0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        number, unit = m.group(1), m.group(2)
        if not number or number == "." or not m.end() > pos:
            raise Invalid(f'time: invalid duration "{text}"')
        if not unit:
            raise Invalid(f'time: missing unit in duration "{text}"')
        if unit not in _UNITS:
            raise Invalid(f'time: unknown unit "{unit}" in duration "{text}"')
        try:
            total += Decimal(number) * _UNITS[unit]
        except InvalidOperation:
            raise Invalid(f'time: invalid duration "{text}"') from None
        pos = m.end()
    if total > (1 << 63) - 1:
        raise Invalid(f'time: invalid duration "{text}"')
    return sign * int(total)


# -- STOPSIGNAL ---------------------------------------------------------------------------------------------------
_SIGNALS = frozenset(
    "ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT RTMAX RTMIN SEGV STKFLT "
    "STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ".split()
    + [f"RTMIN+{i}" for i in range(1, 16)] + [f"RTMAX-{i}" for i in range(1, 15)])


def parse_signal(text: str) -> str:
    """The signal as Docker accepts it: a number or a name with or without ``SIG``; returned as written."""
    if text.isascii() and text.isdigit():
        if int(text) == 0 or int(text) >= 1 << 32:
            raise Invalid(f"invalid signal: {text}")
        return text
    name = text.upper()
    name = name[3:] if name.startswith("SIG") else name
    if name not in _SIGNALS:
        raise Invalid(f"invalid signal: {text}")
    return text


# -- ADD --checksum -----------------------------------------------------------------------------------------------
_CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}|[0-9a-f]{40}|[0-9a-f]{64}")


def parse_checksum(text: str) -> str:
    """A digest (``sha256:<hex>``) for URLs, or a git commit hash for git sources."""
    if not _CHECKSUM_RE.fullmatch(text):
        raise Invalid(f"invalid checksum digest format: {text} (expected sha256:<64 hex digits>)")
    return text


# -- RUN --mount --------------------------------------------------------------------------------------------------
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")


@dataclass(frozen=True, slots=True)
class Mount:
    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""
    readonly: bool = True
    id: str = ""
    sharing: str = ""  # cache: shared | private | locked ("" means shared)
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    size: int | None = None  # tmpfs size limit in bytes
    env: str | None = None  # secret exposed as an environment variable


def parse_mount(spec: str, *, expand: Callable[[str], str] | None = None) -> Mount:
    """Parse one ``--mount`` value (CSV of ``key=value``). Without ``expand`` (parse time) values are taken as
    written; the planner parses again with its expander, as BuildKit does."""
    fields = _csv_fields(spec)
    m: dict[str, object] = {"type": "bind"}
    ro_auto = True
    for field in fields:
        key, has_value, value = field.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro"):
                m["readonly"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                m["readonly"], ro_auto = False, False
            elif key == "required":
                _require_type(m, key, ("secret", "ssh"))
                m["required"] = True
            else:
                raise Invalid(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "from" and "$" in value[:-1]:
            raise Invalid("'from' doesn't support variable expansion, define alias stage instead")
        if expand is not None and key != "from":
            value = expand(value)
        if key == "type":
            if value.lower() not in MOUNT_TYPES:
                raise Invalid(f'unsupported mount type "{value}"')
            m["type"] = value.lower()
        elif key == "from":
            m["from_"] = value
        elif key in ("target", "dst", "destination"):
            m["target"] = value
        elif key in ("src", "source"):
            m["source"] = value
        elif key in ("readonly", "ro", "readwrite", "rw"):
            flag = _parse_bool(value, key)
            m["readonly"] = flag if key in ("readonly", "ro") else not flag
            ro_auto = False
        elif key == "required":
            _require_type(m, key, ("secret", "ssh"))
            m["required"] = _parse_bool(value, key)
        elif key == "size":
            _require_type(m, key, ("tmpfs",))
            m["size"] = parse_ram_bytes(value)
        elif key == "id":
            m["id"] = value
        elif key == "sharing":
            if m["type"] != "cache":
                raise Invalid(f"invalid cache sharing set for {m['type']} mount")
            if value.lower() not in ("shared", "private", "locked"):
                raise Invalid(f'unsupported sharing value "{value}"')
            m["sharing"] = value.lower()
        elif key == "mode":
            m["mode"] = _parse_uint(value, 8, key)
        elif key in ("uid", "gid"):
            m[key] = _parse_uint(value, 10, key)
        elif key == "env":
            _require_type(m, key, ("secret",))
            m["env"] = value
        else:
            raise Invalid(f"unexpected key '{key}' in '{field}'")
    kind = m["type"]
    if kind not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if m.get(key) is not None:
                raise Invalid(f'{key} not allowed for "{kind}" type mounts')
    if ro_auto:
        m["readonly"] = kind not in ("cache", "tmpfs")
    if kind == "secret":
        if m.get("from_"):
            raise Invalid("secret mount should not have a from")
        if not (m.get("source") or m.get("target") or m.get("id")):
            raise Invalid("one of source, target required")
    # No target is not an error: BuildKit mounts at the working directory (relative targets are joined to it).
    return Mount(**m)  # type: ignore[arg-type]


def _csv_fields(text: str) -> list[str]:
    """One CSV record the way Go's encoding/csv reads it (quoted fields, ``""`` inside quotes, no bare quotes)."""
    fields: list[str] = []
    pos = 0
    while True:
        if text.startswith('"', pos):
            out, pos = [], pos + 1
            while True:
                end = text.find('"', pos)
                if end < 0:
                    raise Invalid('failed to parse csv mounts: extraneous or missing " in quoted-field')
                out.append(text[pos:end])
                pos = end + 1
                if text.startswith('"', pos):
                    out.append('"')
                    pos += 1
                    continue
                break
            if pos < len(text) and text[pos] != ",":
                raise Invalid('failed to parse csv mounts: extraneous or missing " in quoted-field')
            fields.append("".join(out))
        else:
            end = text.find(",", pos)
            field = text[pos:] if end < 0 else text[pos:end]
            if '"' in field:
                raise Invalid('failed to parse csv mounts: bare " in non-quoted-field')
            fields.append(field)
            pos = len(text) if end < 0 else end
        if pos >= len(text):
            return fields
        pos += 1  # the comma


def _require_type(m: dict[str, object], key: str, types: tuple[str, ...]) -> None:
    if m["type"] not in types:
        raise Invalid(f"unexpected key '{key}' for mount type '{m['type']}'")


def _parse_bool(value: str, key: str) -> bool:
    lowered = value.lower() if value in ("TRUE", "True", "FALSE", "False") else value
    if lowered in ("1", "t", "T", "true"):
        return True
    if lowered in ("0", "f", "F", "false"):
        return False
    raise Invalid(f"invalid value for {key}: {value}")


def _parse_uint(value: str, base: int, key: str) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(c not in digits for c in value) or int(value, base) >= 1 << 32:
        raise Invalid(f"invalid value {value} for {key}")
    return int(value, base)


_RAM_RE = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")


def parse_ram_bytes(text: str) -> int:
    """Docker's ``units.RAMInBytes``: ``64m``, ``1g``, ``512KiB`` are binary multiples."""
    m = _RAM_RE.fullmatch(text)
    if not m:
        raise Invalid(f"invalid size: '{text}'")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise Invalid(f"invalid size: '{text}'") from None
    power = " kmgtp".index((m.group(2) or " ").lower())
    return int(number * (1024 ** power))
