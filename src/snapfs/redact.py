"""Credentials out of everything snapfs prints or records: one rule for every URL in the package.

``redact_url(text)`` takes a URL, or any text with URLs in it (an instruction line, a client library's error, a
``git`` message), and returns it with

- the userinfo replaced: ``https://user:password@host/`` -> ``https://***@host/`` (a user name alone is often a
  token, as in ``https://<token>@github.com/``, so it goes too);
- signed query strings masked whole: when any parameter is a signature, credential or token (``X-Amz-Signature``,
  ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``X-Goog-Credential``, Azure's ``sig``,
  ...), every value is replaced (``se``/``sp``/``sv`` of a SAS token included), the names are kept;
- in other queries, the values of parameters whose names say secret (``token``, ``access_token``, ``api_key``,
  ``password``, a registry's upload ``_state``, ...).

Anything else (paths, hosts, ports, fragments, text that holds no URL) is returned unchanged, byte for byte.
``scrub(text, secrets)`` adds known secret values (from the environment) and secret ``key=value`` pairs outside
URLs, for text that a client library hands us.
"""
from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, unquote

MASK = "***"
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s\"'<>`\\]+")
_TRAILING = ".,;:!)]}"  # punctuation that ends a sentence, not the URL
# Parameters that sign the whole query: their presence makes every value in it a part of the credential.
_SIGNING = frozenset((
    "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
    "x-goog-credential", "x-goog-security-token", "googleaccessid", "awsaccesskeyid", "policy", "key-pair-id"))
_SECRET_NAME = re.compile(r"(?i)sig|token|secret|pass|pwd|key|cred|auth|session|state|code|private|bearer")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|access_token|token|accountkey|sharedaccesssignature|password)=([^&\s;\"']+)")


def redact_url(text: str) -> str:
    """``text`` (a URL, or text holding URLs) with userinfo and secret query values replaced by ``***``."""
    if "://" not in text:
        return text
    return _URL.sub(_one, text)


def _one(match: re.Match) -> str:
    url = match.group(0)
    tail = ""
    while url and url[-1] in _TRAILING:
        url, tail = url[:-1], url[-1] + tail
    scheme, _, rest = url.partition("://")
    cut = _authority_end(rest)
    authority, rest = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = MASK + "@" + authority.rpartition("@")[2]
    path, qmark, query = rest.partition("?")
    query, hashmark, fragment = query.partition("#") if qmark else ("", "", "")
    if not qmark:
        path, hashmark, fragment = path.partition("#")
    # a URL nested in the path, a kept value or the fragment (a redirect target, an archive's link) is redacted too
    rest = redact_url(path) + (("?" + _query(query)) if qmark else "") + hashmark + redact_url(fragment)
    return f"{scheme}://{authority}{rest}{tail}"


def _authority_end(rest: str) -> int:
    """Where the authority ends: at the first ``/``, ``?`` or ``#``; but a typed password holding a bare ``/``
    (``user:pa/ss@host``: invalid, yet seen) extends it to the host after the ``@``. A ``host:port`` (digits)
    or ``[v6]`` before the ``/`` is a real authority, so ``http://h:4873/@scope/pkg`` keeps its path."""
    cut = _first(rest, "/?#")
    head = rest[:cut]
    if "@" in head or ":" not in head or head.startswith("[") or head.rpartition(":")[2].isdigit():
        return cut
    at = rest.find("@", cut, _first(rest, "?#"))
    if at == -1:
        return cut
    return at + 1 + _first(rest[at + 1:], "/?#")


def _first(text: str, chars: str) -> int:
    found = [i for i in (text.find(c) for c in chars) if i != -1]
    return min(found) if found else len(text)


def _query(query: str) -> str:
    parts = query.split("&")
    names = [unquote(p.partition("=")[0]).strip().lower() for p in parts]
    signed = any(n in _SIGNING for n in names)
    out = []
    for part, name in zip(parts, names):
        key, eq, value = part.partition("=")
        if eq and value and (signed or _SECRET_NAME.search(name)):
            value = MASK
        elif not eq and signed and part:
            key = MASK  # a bare value in a signed query may be the signature itself
        out.append(key + eq + redact_url(value))
    return "&".join(out)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secret values (also URL-quoted), every URL's credentials (:func:`redact_url`) and
    secret-looking ``key=value`` pairs replaced by ``***``: for messages that come from client libraries."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
            quoted = quote(secret, safe="", errors="surrogateescape")  # a secret may hold any bytes
            if quoted != secret:
                text = text.replace(quoted, MASK)
    return _SECRET_ASSIGNMENT.sub(r"\1=" + MASK, redact_url(text))


__all__ = ["MASK", "redact_url", "scrub"]
