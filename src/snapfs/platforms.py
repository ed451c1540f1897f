"""The one ``Platform`` value: ``os/arch[/variant]``, parsed and matched the way Docker (containerd) does.

A leaf: imports only ``errors``, so the Dockerfile frontend (``TARGETPLATFORM`` and friends), the image model
(index entries, configs) and the CLI share one parser, one host default, one error and one matching rule.

Normalisation, as containerd's ``platforms.Normalize``: names are lower-cased; ``x86_64``/``x86-64`` are
``amd64``, ``aarch64`` is ``arm64``, ``i386``/``i686`` are ``386``; ``armv7l``/``armv6l`` are ``arm`` with
variant ``v7``/``v6``, and a bare ``arm`` means ``arm/v7``. A lone architecture (``arm64``) means Linux.
"""
from __future__ import annotations

import platform as _host
from dataclasses import dataclass
from typing import Mapping

from snapfs.errors import UsageError

# architecture alias -> (architecture, variant implied by the alias, or "" when it implies none)
_ARCH_ALIASES = {"x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "aarch64": ("arm64", ""),
                 "i386": ("386", ""), "i686": ("386", ""), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
                 "armhf": ("arm", "v7"), "armel": ("arm", "v6")}
# architectures a lone word may name (``--platform arm64`` means ``linux/arm64``)
_KNOWN_ARCHES = frozenset({"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64"})


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` (or a lone known architecture, meaning Linux), normalised as Docker does.

        Raises ``UsageError`` (exit 2) for anything else.
        """
        parts = text.strip().lower().split("/")
        if len(parts) == 1 and parts[0] and _normalise_arch(parts[0], "")[0] in _KNOWN_ARCHES:
            parts = ["linux", *parts]
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f'invalid platform "{text}": expected os/arch[/variant]')
        arch, variant = _normalise_arch(parts[1], parts[2] if len(parts) == 3 else "")
        return cls(os=parts[0], architecture=arch, variant=variant)

    @classmethod
    def host(cls) -> Platform:
        """This machine (always Linux): ``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``, ..."""
        return cls.parse("linux/" + (_host.machine().lower() or "amd64"))

    def matches(self, other: Platform) -> bool:
        """Does ``other`` (a candidate from an index) satisfy this wanted platform?

        OS and architecture must be equal; a wanted variant must be equal too, except that arm64's only
        variant is v8, so ``arm64`` and ``arm64/v8`` are the same thing. No wanted variant accepts any.
        """
        if self.os != other.os or self.architecture != other.architecture:
            return False
        if not self.variant or self.variant == other.variant:
            return True
        return self.architecture == "arm64" and {self.variant, other.variant} <= {"", "v8"}

    def to_json(self) -> dict:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        return out

    @classmethod
    def from_json(cls, obj: Mapping) -> Platform:
        """An OCI ``platform`` object (an index entry's) as written: not normalised, never an error."""
        return cls(os=str(obj.get("os", "")), architecture=str(obj.get("architecture", "")),
                   variant=str(obj.get("variant", "") or ""), os_version=str(obj.get("os.version", "") or ""))


def _normalise_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, implied = _ARCH_ALIASES.get(arch, (arch, ""))
    variant = variant or implied
    if arch == "arm" and not variant:
        variant = "v7"
    return arch, variant


__all__ = ["Platform"]
