"""Cache keys: what changes a key and what does not, and the one-line explanation of a miss."""
from __future__ import annotations

import json

from hypothesis import given, strategies as st

from snapfs.cache.keys import (FileTable, StepInputs, explain, hashed_values, initial_state, slot_of, state_after,
                               tag_for)

BASE = StepInputs(slot=slot_of("Dockerfile:0", 3, "RUN"), instruction={"keyword": "RUN", "command": ["make"]},
                  parent=initial_state("sha256:" + "0" * 64, {"Env": ["PATH=/bin"]}), platform="linux/amd64",
                  layer_format={"compression": "gzip"}, args=hashed_values({"VERSION": "1"}),
                  env=hashed_values({"PATH": "/bin"}), config={"user": "", "workdir": "/", "shell": ["/bin/sh", "-c"]},
                  files={"sources": FileTable((("a", ("f", "0o644", "", "2", "aa")),
                                               ("b", ("f", "0o644", "", "2", "bb")))).to_json()})


def changed(**kw) -> StepInputs:
    from dataclasses import replace

    return replace(BASE, **kw)


def test_every_input_changes_the_key_but_only_local_inputs_change_the_local_key():
    assert changed().key() == BASE.key()
    for kw in ({"instruction": {"keyword": "RUN", "command": ["make", "all"]}}, {"platform": "linux/arm64"},
               {"layer_format": {"compression": "zstd"}}, {"args": hashed_values({"VERSION": "2"})},
               {"env": hashed_values({"PATH": "/usr/bin"})}, {"extra": {"url x": "sha256:1"}},
               {"files": {"sources": FileTable((("a", ("f", "0o644", "", "2", "ab")),)).to_json()}}):
        assert changed(**kw).key() != BASE.key(), kw
        assert changed(**kw).local_key() != BASE.local_key(), kw
    for kw in ({"parent": "sha256:other"}, {"config": {"user": "app"}}):
        assert changed(**kw).key() != BASE.key(), kw
        assert changed(**kw).local_key() == BASE.local_key(), kw
    # The same step at another position (slot) on the same state shares the entry.
    assert changed(slot=slot_of("Dockerfile:0", 4, "RUN")).key() == BASE.key()


def test_stored_inputs_hold_no_value_of_an_arg_or_env_and_the_key_is_stable_through_json():
    doc = json.dumps(changed(args=hashed_values({"TOKEN": "hunter2-secret"})).to_json())
    assert "hunter2-secret" not in doc and "TOKEN" in doc
    assert BASE.to_json()["files"]["sources"]["files"]["a"] == ["f", "0o644", "", "2", "aa"]
    BASE.key()
    assert "files" in BASE.to_json()["files"]["sources"]  # computing a key does not strip the stored table


def test_state_chains_on_results():
    s0 = BASE.parent
    assert state_after(s0) == s0  # an empty-layer step leaves the state
    a = state_after(s0, diff_id="sha256:" + "1" * 64)
    assert a != s0 and state_after(s0, diff_id="sha256:" + "1" * 64) == a
    assert state_after(a, config={"User": "x"}) != state_after(a, config={"User": "y"})


def test_tags_are_valid_registry_tags():
    import re

    for kind in "kls":
        tag = tag_for(kind, BASE.key())
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag)


def test_explanations():
    assert explain(None, BASE) == "no entry for this step yet"
    stored = BASE.to_json()
    assert explain(stored, changed(instruction={"keyword": "RUN", "command": ["x"]})) == "the instruction changed"
    assert explain(stored, changed(args=hashed_values({"VERSION": "2"}))) == "build arg VERSION changed"
    assert explain(stored, changed(args=hashed_values({"VERSION": "1", "NEW": "x"}))) == "build arg NEW changed"
    assert explain(stored, changed(env=hashed_values({"PATH": "/x"}))) == "env PATH changed"
    assert explain(stored, changed(platform="linux/arm64")) == "the platform changed (linux/amd64 -> linux/arm64)"
    files = FileTable((("a", ("f", "0o600", "", "2", "aa")), ("c", ("f", "0o644", "", "3", "cc")))).to_json()
    assert explain(stored, changed(files={"sources": files})) == "a changed (mode), b removed, c added"
    assert explain(stored, changed(config={**BASE.config, "user": "app"})) == "user changed ('' -> 'app')"
    assert "earlier step's result" in explain(stored, changed(parent="sha256:x"))
    assert explain({**stored, "version": 0}, BASE).startswith("the stored entry was written by another")


@given(st.lists(st.text(alphabet="abc/", min_size=1, max_size=6), unique=True, max_size=12),
       st.lists(st.text(alphabet="abc/", min_size=1, max_size=6), unique=True, max_size=12))
def test_a_file_explanation_names_at_most_three_and_counts_the_rest(old, new):
    def table(paths):
        return FileTable(tuple((p, ("f", "0o644", "", "1", p)) for p in sorted(paths))).to_json()

    why = explain(changed(files={"sources": table(old)}).to_json(), changed(files={"sources": table(new)}))
    diff = set(old) ^ set(new)
    if not diff:
        assert "files" not in why and "added" not in why and "removed" not in why
    else:
        named = why.split(" and ")[0].count(",") + 1
        assert named == min(3, len(diff))
        if len(diff) > 3:
            assert why.endswith(f" and {len(diff) - 3} more")
