"""`snapfs build`: Kaniko's executor flags, so a Kaniko Job works by changing the image name.

Boolean flags take Go's forms too (``--no-push``, ``--no-push=true``, ``--cache=false``). Flags that snapfs
recognises but does not implement yet are refused with a clear error, never silently ignored.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time

from snapfs.errors import UsageError

from . import kaniko_compat

BOOLEAN_FLAGS = ("--no-push", "--reproducible", "--single-snapshot", "--cache", "--cache-copy-layers",
                 "--cache-run-layers", "--no-push-cache", "--use-new-run", "--ignore-var-run", "--cleanup",
                 "--skip-unused-stages", "--insecure", "--insecure-pull", "--skip-tls-verify",
                 "--skip-tls-verify-pull", "--skip-default-registry-fallback", "--log-timestamp",
                 "--compressed-caching", "--force", "--skip-push-permission-check")
_DEFAULT_TRUE = {"--ignore-var-run", "--skip-unused-stages", "--compressed-caching", "--cache-run-layers"}
_BOOLEAN_HELP = {
    "--cache": "use the layer cache: RUN (and with --cache-copy-layers COPY/ADD) steps whose inputs are unchanged "
               "are not run again (default false)",
    "--cache-copy-layers": "also cache COPY and ADD steps (default false)",
    "--cache-run-layers": "cache RUN steps when --cache is on (default true)",
    "--no-push-cache": "read the layer cache but do not store new entries (default false)",
    "--compressed-caching": "accepted for Kaniko compatibility (snapfs always streams layers)",
"--skip-push-permission-check": "do not check push access to every --destination before the "
                                                 "first step (default false: checked)"}


# The cache's own switches: given without --cache they have no effect, and the build says so.
_CACHE_FLAGS = ("--cache-copy-layers", "--cache-run-layers", "--no-push-cache")


class _Noted(argparse._StoreTrueAction):
    """store_true that also notes the flag was given (a default-true flag cannot tell otherwise)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.__dict__.setdefault("given_cache_flags", set()).add(self.option_strings[0])


class _NotedFalse(argparse._StoreFalseAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.__dict__.setdefault("given_cache_flags", set()).add("--" + self.option_strings[0][12:])


def normalize_booleans(argv: list[str]) -> list[str]:
    """Rewrite Go-style ``--flag=true|false`` for boolean flags into argparse's forms."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and (name in BOOLEAN_FLAGS or name in kaniko_compat.BOOLEAN_FLAGS):
            v = value.lower()
            if v in ("true", "1", "yes"):
                out.append(name)
            elif v in ("false", "0", "no"):
                out.append(f"--no-snapfs-{name[2:]}")
            else:
                raise UsageError(f"{name}: expected true or false, got {value!r}")
        else:
            out.append(arg)
    return out


def register(sub) -> None:
    from .registry import add_registry_arguments

    p = sub.add_parser("build", help="build an image from a Dockerfile (Kaniko executor flags)",
                       description="Build a Dockerfile into an OCI image without a daemon.")
    p.add_argument("-c", "--context", default="/workspace/", help="build context (dir://, tar://, s3://, gs://, "
                   "https://, git://; default /workspace/)")
    p.add_argument("-f", "--dockerfile", default="Dockerfile", help="path of the Dockerfile (in the context)")
    p.add_argument("--context-sub-path", default="", help="sub-directory of the context to build")
    p.add_argument("--git", default="", help="git options: branch=..,single-branch=..,recurse-submodules=..")
    p.add_argument("--build-arg", action="append", default=[], metavar="K[=V]")
    p.add_argument("--target", default=None, help="stage to build")
    p.add_argument("--custom-platform", default=None, metavar="OS/ARCH[/VARIANT]")
    p.add_argument("--platform-mismatch", default="error", choices=("error", "warn"),
                   help="a single-platform base for another platform than asked: error, or warn and use it "
                        "(default: error)")
    p.add_argument("-d", "--destination", action="append", default=[], metavar="REF")
    p.add_argument("--tar-path", default=None, help="also write a docker-archive tarball")
    p.add_argument("--oci-layout-path", default=None, help="also write an OCI image layout")
    p.add_argument("--digest-file", default=None)
    p.add_argument("--image-name-with-digest-file", default=None)
    p.add_argument("--image-name-tag-with-digest-file", default=None)
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--compression", default="gzip", choices=("gzip", "zstd"))
    p.add_argument("--compression-level", type=int, default=None)
    p.add_argument("--image-format", default="oci", choices=("oci", "docker"),
                   help="manifest and config media types (default oci)")
    p.add_argument("--snapshot-mode", default="full", choices=("full", "redo", "time"))
    p.add_argument("--ignore-path", action="append", default=[], metavar="PATH")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID,src=PATH",
                   help="secret for RUN --mount=type=secret")
    p.add_argument("--cache-dir", default=None, help="where base image layers and RUN caches are kept")
    p.add_argument("--cache-repo", default=None, help="where the layer cache lives: a registry repository or "
                   "oci:DIR (default: <first destination's repository>/cache)")
    p.add_argument("--cache-ttl", default=None, metavar="DURATION",
                   help="cached layers older than this are not used (Go duration, default 336h)")
    p.add_argument("--cache-report", default=None, metavar="FILE",
                   help="write every step's cache key, hit or miss, reason and time as JSON")
    p.add_argument("--kaniko-dir", default=os.environ.get("KANIKO_DIR"), help="accepted for compatibility")
    p.add_argument("--snapfs-dir", default=os.environ.get("SNAPFS_DIR"),
                   help="the builder's own directory in a container (default /snapfs); never snapshotted")
    p.add_argument("--benchmark-file", default=None, help="write per-step timings as JSON")
    p.add_argument("--in-container", default="auto", choices=("auto", "true", "false"),
                   help="build over the container's own / like Kaniko (auto: when running from the executor image)")
    p.add_argument("--isolation", default="auto", choices=("auto", "namespaces", "none"),
                   help="RUN isolation: namespaces when allowed (auto), always, or never")
    p.add_argument("-v", "--verbosity", default="info",
                   choices=("panic", "fatal", "error", "warn", "info", "debug", "trace"))
    p.add_argument("--log-format", default="text", choices=("text", "color", "json"))
    for flag in BOOLEAN_FLAGS:
        dest = flag[2:].replace("-", "_")
        if flag not in ("--insecure", "--insecure-pull", "--skip-tls-verify", "--skip-tls-verify-pull",
                        "--skip-default-registry-fallback"):
            p.add_argument(flag, dest=dest, action=_Noted if flag in _CACHE_FLAGS else "store_true",
                           default=flag in _DEFAULT_TRUE, help=_BOOLEAN_HELP.get(flag))
        # The hidden negative form must not set a default: argparse takes a dest's default from the first
        # action registered for it, which would make every registry flag below default to true.
        p.add_argument(f"--no-snapfs-{flag[2:]}", dest=dest, action=_NotedFalse if flag in _CACHE_FLAGS else
                       "store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_registry_arguments(p)
    kaniko_compat.register(p)
    p.set_defaults(func=cmd_build)


def _kv(values: list[str], flag: str, *, env_fallback: bool = False) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        key, eq, value = v.partition("=")
        if not key:
            raise UsageError(f"{flag} {v!r}: expected KEY=VALUE")
        if not eq:
            if not env_fallback:
                raise UsageError(f"{flag} {v!r}: expected KEY=VALUE")
            if key not in os.environ:
                continue  # Kaniko: a bare --build-arg K without K in the environment is left unset
            value = os.environ[key]
        out.append((key, value))
    return tuple(out)


def _secrets(values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        fields = dict(part.partition("=")[::2] for part in v.split(","))
        sid, src = fields.get("id"), fields.get("src") or fields.get("source")
        if not sid or not src:
            raise UsageError(f"--secret {v!r}: expected id=ID,src=PATH")
        if not os.path.isfile(src):
            raise UsageError(f"--secret id={sid}: {src}: no such file")
        out.append((sid, src))
    return tuple(out)


def options_from_args(args):
    from snapfs.builder.pipeline import BuildOptions
    from .registry import registry_options
    from snapfs.image.transports import OutputOptions
    from snapfs.image.reference import parse_reference

    from snapfs.cache.session import DEFAULT_TTL, CacheOptions

    kaniko_compat.apply(args)
    log = logging.getLogger("snapfs.build")
    # Accepted for Kaniko compatibility, with nothing to do here: said out loud, never silently dropped.
    no_effect = {
        "--use-new-run": (args.use_new_run, "snapfs always diffs after RUN with its stat-first engine"),
        "--force": (args.force, "snapfs builds anywhere, in a container or not"),
        "--compressed-caching": (not args.compressed_caching, "snapfs never holds a layer in memory"),
        "--cache-repo": (bool(args.cache_repo) and not args.cache, "the layer cache is off (no --cache)"),
        "--skip-unused-stages": (not args.skip_unused_stages, "snapfs always skips stages the target does not need"),
        "--kaniko-dir": (args.kaniko_dir not in (None, os.environ.get("KANIKO_DIR")),
                         "snapfs keeps its files in --snapfs-dir"),
    }
    if not args.cache:
        given = set(getattr(args, "given_cache_flags", ()))
        given |= {f for f, v in (("--cache-ttl", args.cache_ttl), ("--cache-report", args.cache_report)) if v}
        for flag in sorted(given):
            no_effect[flag] = (True, "the layer cache is off (no --cache)")
    for flag, (given, why) in no_effect.items():
        if given:
            log.info("%s has no effect: %s", flag, why)
    destinations = tuple(parse_reference(d) for d in args.destination)
    outputs = OutputOptions(destinations=destinations, no_push=args.no_push, tar_path=args.tar_path,
                            oci_layout_path=args.oci_layout_path, digest_file=args.digest_file,
                            image_name_with_digest_file=args.image_name_with_digest_file,
                            image_name_tag_with_digest_file=args.image_name_tag_with_digest_file,
                            check_push_access=not args.skip_push_permission_check)
    return kaniko_compat.finish(BuildOptions(
        context=args.context, dockerfile=args.dockerfile, context_sub_path=args.context_sub_path,
        git_options=args.git, build_args=_kv(args.build_arg, "--build-arg", env_fallback=True),
        target=args.target, outputs=outputs, registry=registry_options(args), snapshot_mode=args.snapshot_mode,
        single_snapshot=args.single_snapshot, reproducible=args.reproducible, compression=args.compression,
        compression_level=args.compression_level, image_format=args.image_format,
        labels=_kv(args.label, "--label"), custom_platform=args.custom_platform, cache_dir=args.cache_dir or "",
        ignore_paths=tuple(args.ignore_path), ignore_var_run=args.ignore_var_run,
        secrets=_secrets(args.secret), benchmark_file=args.benchmark_file, isolation=args.isolation,
        in_place={"auto": None, "true": True, "false": False}[args.in_container], cleanup=args.cleanup,
        snapfs_dir=args.snapfs_dir or "", log_run_output=args.log_format == "json",
        platform_mismatch=args.platform_mismatch,
        cache=CacheOptions(enabled=args.cache, repo=args.cache_repo or "", copy_layers=args.cache_copy_layers,
                           run_layers=args.cache_run_layers, push=not args.no_push_cache,
                           ttl=DEFAULT_TTL if args.cache_ttl is None else go_duration(args.cache_ttl, "--cache-ttl"),
                           report_file=args.cache_report)), args)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str, flag: str) -> float:
    """Seconds in a Go duration (``336h``, ``1h30m``, ``90s``), as Kaniko's flags take them."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise UsageError(f"{flag} {text!r}: expected a duration such as 336h, 90m or 1h30m")
    return total



def json_line(level: str, msg: str, *, created: float | None = None, **fields) -> str:
    """One JSON log line (``--log-format json``): level, msg, time (RFC 3339, UTC), then ``fields``."""
    when = time.time() if created is None else created
    return json.dumps({"level": level, "msg": msg, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
                       **fields})


# Fields a record may carry (``extra=``) that a JSON line keeps: RUN output says which step and which stream.
_JSON_FIELDS = ("step", "stream")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: getattr(record, k) for k in _JSON_FIELDS if hasattr(record, k)}
        return json_line(_LEVEL_NAMES.get(record.levelno, record.levelname.lower()), record.getMessage(),
                         created=record.created, **fields)


_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
                logging.CRITICAL: "fatal"}
# --log-format color on a terminal: the level in Kaniko's (logrus's) colours before each line.
_COLOURS = {logging.DEBUG: ("DEBU", "37"), logging.INFO: ("INFO", "36"), logging.WARNING: ("WARN", "33"),
            logging.ERROR: ("ERRO", "31"), logging.CRITICAL: ("FATA", "31")}


class _ColourFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tag, colour = _COLOURS.get(record.levelno, ("INFO", "36"))
        return f"\x1b[{colour}m{tag}\x1b[0m {super().format(record)}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record, so lines go above the progress bars (rich swaps
    ``sys.stderr`` for a proxy while bars are live)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbosity: str, fmt: str, timestamps: bool) -> None:
    """The ``snapfs`` logger as Kaniko's log flags say, and the matching progress display: rich bars on a
    terminal for text and color, log lines otherwise (so that in json every line is JSON)."""
    from snapfs import progress

    level = {"panic": logging.CRITICAL, "fatal": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
             "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG}[verbosity]
    handler = _StderrHandler()
    tty = sys.stderr.isatty()
    text_format = "%(asctime)s %(message)s" if timestamps else "%(message)s"
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif fmt == "color" and tty:
        handler.setFormatter(_ColourFormatter(text_format))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    root = logging.getLogger("snapfs")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if fmt == "json":  # the libraries' warnings (and Python's) in the same format, not as bare text
        logging.captureWarnings(True)
        top = logging.getLogger()
        top.handlers[:] = [h for h in top.handlers if not isinstance(h, _StderrHandler)] + [handler]
    progress.configure("bar" if tty and fmt != "json" and level <= logging.INFO else "log")


def cmd_build(args) -> int:
    from snapfs.builder.pipeline import build

    setup_logging(args.verbosity, args.log_format, args.log_timestamp)
    result = build(options_from_args(args))
    if args.log_format == "json":  # stdout too is JSON lines: the digest is a field of its own
        print(json_line("info", result.digest, digest=result.digest))
    else:
        print(result.digest)
    return 0
