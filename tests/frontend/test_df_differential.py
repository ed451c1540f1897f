"""Differential test: our syntax layer against BuildKit's own parser (the ``dockerfile`` PyPI package wraps it).

On every corpus file both must agree on each instruction's name, flags, arguments, JSON form, line range,
original text and heredocs. Normalisations, each deliberate:

- keyword case: the package reports the keyword as written (``run``); we store it upper-cased.
- ONBUILD: the package reports the trigger as ``sub_cmd`` + ``value``; we keep it as a nested node. For an
  ONBUILD heredoc the package drops the body (its ``heredocs`` is empty and ``original`` lacks the body), while
  BuildKit's instruction layer does use it; we attach it to the trigger, so heredocs and ``original`` are only
  compared for the top-level node there.
- unknown keywords: the package gives them one empty argument; we keep none. The instruction layer rejects
  them either way, so only their name and line range are compared.
- non-ASCII in flags: BuildKit's flag splitter walks bytes and turns each byte into a character (``é`` becomes
  ``Ã©``); we keep the text, so the package's flags are mapped back (latin-1 bytes decoded as UTF-8).
- nameless nodes (a line holding only a continuation character) are skipped by us; the package reports them
  with ``cmd=None`` and they make BuildKit fail later, so they are dropped from its side too.
"""
from __future__ import annotations

import dockerfile as buildkit
import pytest

from snapfs.frontend.syntax import _FORMS, Node, parse

from df_corpus import BASE, corpus

CORPUS = corpus()
KNOWN = frozenset(_FORMS)


def _unmangle(flag: str) -> str:
    try:
        return flag.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return flag


def _theirs(text: str) -> list[dict]:
    out = []
    for c in buildkit.parse_string(text):
        if c.cmd is None:
            continue
        cmd = c.cmd.upper() if c.cmd.isascii() else c.cmd
        item = {"cmd": cmd, "flags": tuple(map(_unmangle, c.flags)), "json": c.json,
                "lines": (c.start_line, c.end_line)}
        if item["cmd"] not in KNOWN:
            pass
        elif c.sub_cmd is not None:
            sub = c.sub_cmd.upper() if c.sub_cmd.isascii() else c.sub_cmd
            item["trigger"] = (sub, tuple(c.value) if sub in KNOWN else None)
        else:
            item["value"] = tuple(c.value)
            item["original"] = c.original
            item["heredocs"] = tuple((h.name, h.content) for h in c.heredocs)
        out.append(item)
    return out


def _ours(text: str) -> list[dict]:
    out = []
    for n in parse(text).nodes:
        item = {"cmd": n.keyword, "flags": n.flags, "json": n.json, "lines": (n.start_line, n.end_line)}
        if n.keyword not in KNOWN:
            pass
        elif n.trigger is not None:
            t: Node = n.trigger
            item["trigger"] = (t.keyword, t.args if t.keyword in KNOWN else None)
            item["json"] = t.json  # the package reports the trigger's JSON attribute on the ONBUILD node
            item["flags"] = n.flags  # the package reports the ONBUILD node's own flags
        else:
            item["value"] = n.args
            item["original"] = n.original
            item["heredocs"] = tuple((h.name, h.content) for h in n.heredocs)
        out.append(item)
    return out


def test_corpus_is_large_enough_and_covers_the_features():
    assert len(CORPUS) >= 150
    text = "\n".join(CORPUS.values())
    for needle in ("<<EOF", "<<-", "# escape=`", "--mount=type=secret", "HEALTHCHECK NONE", "ONBUILD", "\r\n",
                   "\ufeff", "--parents", "--exclude", "--checksum", "--keep-git-dir", "--unpack", "STOPSIGNAL",
                   "MAINTAINER", "SHELL [", "ENV THREE three"):
        assert needle in text, needle


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_same_nodes_as_buildkit(name: str):
    text = CORPUS[name]
    theirs, ours = _theirs(text), _ours(text)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a == b


@pytest.mark.parametrize("name", sorted(BASE))
def test_line_ranges_cover_the_file(name: str):
    # A sanity check on the corpus itself: a file whose nodes both parsers drop would compare equal vacuously.
    assert len(_ours(BASE[name])) >= 2
