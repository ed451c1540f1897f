"""The package's one redaction rule (snapfs.redact): what is masked, and that everything else is left alone."""
from __future__ import annotations

import pytest

from snapfs import redact
from snapfs.redact import redact_url, scrub

CASES = [
    # userinfo: password, user alone (often a token), both URL-quoted, an "@" inside the password
    ("https://user:password@host/f.tgz", "https://***@host/f.tgz"),
    ("http://user:password@127.0.0.1:8080/f", "http://***@127.0.0.1:8080/f"),
    ("https://ghp_TOKEN123@github.com/o/r.git#main", "https://***@github.com/o/r.git#main"),
    ("https://u%40x:p%3Aw@host/", "https://***@host/"),
    ("https://u:p@ss@host/x", "https://***@host/x"),
    ("https://user:pa/ss@host/x", "https://***@host/x"),  # a bare "/" typed in the password
    ("https://user:pa/ss@host", "https://***@host"),
    ("git://user:tok3n@github.com/o/r.git#main", "git://***@github.com/o/r.git#main"),
    ("s3://AKIA:SECRET@bucket/key", "s3://***@bucket/key"),
    # signed queries: every value masked, names kept
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2024&"
     "X-Amz-Date=20240101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123",
     "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=***&X-Amz-Credential=***&X-Amz-Date=***&X-Amz-Expires=***&"
     "X-Amz-SignedHeaders=***&X-Amz-Signature=***"),
    ("https://h/k?X-Amz-Security-Token=FQoG&x=1", "https://h/k?X-Amz-Security-Token=***&x=***"),
    ("https://h/k?X-Amz-Credential=AKIA", "https://h/k?X-Amz-Credential=***"),
    ("https://a.blob.core.windows.net/c/b?sv=2021-08-06&se=2030-01-01&sp=r&sr=b&sig=SECRETSIG%3D",
     "https://a.blob.core.windows.net/c/b?sv=***&se=***&sp=***&sr=***&sig=***"),
    ("https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p&"
     "X-Goog-Signature=deadbeef", "https://storage.googleapis.com/b/o?X-Goog-Algorithm=***&X-Goog-Credential=***&"
     "X-Goog-Signature=***"),
    ("https://h/o?GoogleAccessId=sa&Expires=1&Signature=zz",
     "https://h/o?GoogleAccessId=***&Expires=***&Signature=***"),
    ("https://h/k?sig=x&RAWTOKEN", "https://h/k?sig=***&***"),
    # secret-named parameters in an unsigned query: only those values
    ("https://h/f?token=t0k&v=2", "https://h/f?token=***&v=2"),
    ("https://h/f?access_token=t0k#frag", "https://h/f?access_token=***#frag"),
    ("https://h/f?private_token=a&api_key=b&password=c&page=3", "https://h/f?private_token=***&api_key=***&"
     "password=***&page=3"),
    ("http://reg:5000/v2/r/blobs/uploads/u1?_state=SIGNEDSTATE&digest=sha256:ab",
     "http://reg:5000/v2/r/blobs/uploads/u1?_state=***&digest=sha256:ab"),
    # URLs inside text: each one redacted, the text around kept (quotes, parentheses, sentence punctuation)
    ("ADD http://user:password@127.0.0.1:9/f.txt /dst/", "ADD http://***@127.0.0.1:9/f.txt /dst/"),
    ('ADD ["https://u:p@h/a", "https://h/b?sig=1", "/d/"]', 'ADD ["https://***@h/a", "https://h/b?sig=***", "/d/"]'),
    ("fatal: unable to access 'https://x:TOKEN@127.0.0.1:1/r.git/': Failed to connect",
     "fatal: unable to access 'https://***@127.0.0.1:1/r.git/': Failed to connect"),
    ("see (https://h/x?token=abc).", "see (https://h/x?token=***)."),
    ("two: https://a:b@h1/ and http://c:d@h2/.", "two: https://***@h1/ and http://***@h2/."),
    # URLs nested in a URL: in a kept query value, in the path, in the fragment
    ("https://h/login?next=https://u:p@x/y&v=1", "https://h/login?next=https://***@x/y&v=1"),
    ("https://web.archive.org/web/2020/https://u:p@x/f.tgz", "https://web.archive.org/web/2020/https://***@x/f.tgz"),
    ("https://h/r#https://u:p@x/", "https://h/r#https://***@x/"),
    # not URLs, or URLs without secrets: unchanged byte for byte
    ("RUN echo user:password@host && curl -fsS https://example.com/a?b=c#d",
     "RUN echo user:password@host && curl -fsS https://example.com/a?b=c#d"),
    ("https://registry.npmjs.org/@types/node/-/node-1.tgz", "https://registry.npmjs.org/@types/node/-/node-1.tgz"),
    ("http://127.0.0.1:4873/@scope/pkg/-/pkg-1.tgz", "http://127.0.0.1:4873/@scope/pkg/-/pkg-1.tgz"),
    ("http://[::1]:5000/v2/@x", "http://[::1]:5000/v2/@x"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("password=hunter2 but no URL", "password=hunter2 but no URL"),
    ("", ""),
    ("http://h:8080/p;x=1?y=&z", "http://h:8080/p;x=1?y=&z"),
    ("caf\u00e9 https://h/\u00e9t\u00e9?x=\udcff", "caf\u00e9 https://h/\u00e9t\u00e9?x=\udcff"),
]


@pytest.mark.parametrize("text,want", CASES, ids=[c[0][:40] for c in CASES])
def test_redact_url_table(text, want):
    assert redact_url(text) == want
    assert redact_url(want) == want  # idempotent: a redacted text goes through again unchanged


def test_scrub_adds_known_secrets_and_secret_assignments_outside_urls():
    assert scrub("failed GET https://a:b@h/?sig=zz&x=1 with KEYVALUE", ["KEYVALUE"]) == \
        "failed GET https://***@h/?sig=***&x=*** with ***"
    assert scrub("AccountKey=abc/def== rejected; password=pw") == "AccountKey=*** rejected; password=***"
    assert scrub("key a/b+c= quoted a%2Fb%2Bc%3D", ["a/b+c="]) == "key *** quoted ***"


def test_one_function_for_the_package():
    """The registry's, the context fetchers' and ADD's messages all use this module's function."""
    from snapfs.builder import addsources
    from snapfs.context import resolve as context
    from snapfs.context import fetch as context_fetch
    from snapfs.context import git as context_git
    from snapfs.builder import history
    from snapfs.image.registry import client as registry

    assert registry.redact_url("https://u:p@h/v2/?_state=s") == redact.redact_url("https://u:p@h/v2/?_state=s")
    assert addsources.redact_url is context.redact_url is redact.redact_url
    assert context_fetch.scrub is context_git.scrub is redact.scrub
    assert history.redact_url is redact.redact_url


def test_scrub_takes_secrets_with_bytes_that_are_not_utf8():
    """An argument read with surrogateescape may hold such bytes; the secret is still found, quoted or not."""
    secret = "pa\udcffss"
    assert scrub(f"user {secret} and pa%FFss", [secret]) == "user *** and ***"
