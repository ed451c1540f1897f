"""The rest of Kaniko 1.23's executor surface for `snapfs build`: rare and deprecated flags, and its environment.

:mod:`snapfs.cli.build` holds the flags people use; this module adds the ones a Kaniko Job may still carry
(``--bucket``, ``--push-ignore-immutable-tag-errors``, ``--image-fs-extract-retry``, ``--force-build-metadata``,
the deprecated ``--whitelist-var-run``, ``--snapshotMode``, ``--customPlatform``, ``--tarPath``) and the
environment variables Kaniko's executor reads (``KANIKO_NO_PUSH``, ``KANIKO_REGISTRY_MIRROR``,
``KANIKO_REGISTRY_MAP``, ``KANIKO_DIR``, ``BENCHMARK_FILE``). Each is honoured, or said out loud to have no
effect, or refused: never silently dropped. A flag given on the command line wins over its variable.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

from snapfs.errors import NotSupportedError, UsageError

# Go-style ``--flag=true|false`` forms, as for snapfs.cli.build.BOOLEAN_FLAGS
BOOLEAN_FLAGS = ("--push-ignore-immutable-tag-errors", "--force-build-metadata", "--whitelist-var-run")

# Variables Kaniko's executor reads (cmd/executor/cmd/root.go, pkg/config/init.go), and the flag each stands for.
KANIKO_ENV = {"KANIKO_NO_PUSH": "--no-push", "KANIKO_REGISTRY_MIRROR": "--registry-mirror",
              "KANIKO_REGISTRY_MAP": "--registry-map", "KANIKO_DIR": "--kaniko-dir", "BENCHMARK_FILE": "--benchmark-file"}

_GO_TRUE, _GO_FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")

log = logging.getLogger("snapfs.build")

# Help for `snapfs build` flags defined without any (the test walking the parser requires help on every flag).
HELP = {
    "--build-arg": "build argument K=V; a bare K takes its value from the environment (repeatable)",
    "--custom-platform": "the platform to build for, and to pick base images by (one per build)",
    "--destination": "push the image to REF (repeatable)",
    "--digest-file": "write the image digest to this file",
    "--image-name-with-digest-file": "write NAME@DIGEST of each destination to this file",
    "--image-name-tag-with-digest-file": "write NAME:TAG@DIGEST of each destination to this file",
    "--label": "label K=V on the final image (repeatable)",
    "--compression": "layer compression: gzip or zstd",
    "--compression-level": "compression level of new layers",
    "--snapshot-mode": "full (stat, then content where stat cannot tell), redo (stat only) or time (as redo)",
    "--ignore-path": "leave PATH out of every snapshot (repeatable)",
    "--cache-repo": "layer cache repository",
    "--cache-ttl": "layer cache lifetime",
    "--verbosity": "log level: panic, fatal, error, warn, info, debug or trace",
    "--log-format": "log format: text, color or json",
    "--no-push": "build without pushing to the destinations",
    "--reproducible": "clamp timestamps of new layers and the config (SOURCE_DATE_EPOCH, else 0)",
    "--single-snapshot": "one layer per stage, taken at its end",
    "--cache": "layer caching",
    "--cache-copy-layers": "cache COPY layers",
    "--cache-run-layers": "cache RUN layers",
    "--no-push-cache": "do not push cache layers",
    "--use-new-run": "Kaniko's experimental RUN change detection (no effect: snapfs always diffs after RUN)",
    "--ignore-var-run": "leave /var/run out of snapshots (true unless =false)",
    "--cleanup": "in-container mode: clean the filesystem at the end",
    "--skip-unused-stages": "build only the stages the target needs (true unless =false)",
    "--log-timestamp": "timestamp every log line",
    "--compressed-caching": "Kaniko's compressed cache layers (no effect: layers are never held in memory)",
    "--force": "Kaniko's build outside a container (no effect: snapfs builds anywhere)",
}


class _Deprecated(argparse.Action):
    """A deprecated Kaniko spelling: stores into the current flag's dest and notes its use for a warning."""

    def __init__(self, option_strings, dest, *, use: str, shown: str = "", const=None, nargs=None, **kw) -> None:
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kw)
        self.use, self.shown = use, shown  # shown: the user's spelling of a hidden --no-snapfs-* form

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        used = dict(getattr(namespace, "_deprecated", None) or {})
        used[self.shown or option_string] = self.use
        namespace._deprecated = used


def register(p: argparse.ArgumentParser) -> None:
    """Add the flags to the `snapfs build` parser ``p`` (after snapfs.cli.build's own)."""
    p.add_argument("-b", "--bucket", default=None, metavar="BUCKET",
                   help="Kaniko's GCS bucket holding the context tarball: the same as --context gs://BUCKET "
                        "(BUCKET/context.tar.gz); a value with a scheme (s3://...) is used as the context")
    p.add_argument("--image-fs-extract-retry", type=int, default=0, metavar="N",
                   help="retries of a base layer's download (base layers are downloaded and verified before "
                        "they are extracted; raises --image-download-retry to N)")
    helps = {"--push-ignore-immutable-tag-errors": "a destination whose tag is immutable and already exists "
                                                   "(ECR, Artifact Registry refusals) is logged and skipped",
             "--force-build-metadata": "a layer for every metadata instruction (not supported yet)"}
    for flag, text in helps.items():
        dest = flag[2:].replace("-", "_")
        p.add_argument(flag, dest=dest, action="store_true", default=False, help=text)
        p.add_argument(f"--no-snapfs-{flag[2:]}", dest=dest, action="store_false", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    # Deprecated spellings share the current flag's dest; default SUPPRESS keeps that flag's default.
    p.add_argument("--whitelist-var-run", dest="ignore_var_run", action=_Deprecated, nargs=0, const=True,
                   default=argparse.SUPPRESS, use="--ignore-var-run", help="deprecated spelling of --ignore-var-run")
    p.add_argument("--no-snapfs-whitelist-var-run", dest="ignore_var_run", action=_Deprecated, nargs=0,
                   const=False, default=argparse.SUPPRESS, use="--ignore-var-run=false",
                   shown="--whitelist-var-run=false", help=argparse.SUPPRESS)
    p.add_argument("--snapshotMode", dest="snapshot_mode", action=_Deprecated, choices=("full", "redo", "time"),
                   default=argparse.SUPPRESS, use="--snapshot-mode", help="deprecated spelling of --snapshot-mode")
    p.add_argument("--customPlatform", dest="custom_platform", action=_Deprecated, default=argparse.SUPPRESS,
                   metavar="OS/ARCH[/VARIANT]", use="--custom-platform",
                   help="deprecated spelling of --custom-platform")
    p.add_argument("--tarPath", dest="tar_path", action=_Deprecated, default=argparse.SUPPRESS, metavar="PATH",
                   use="--tar-path", help="deprecated spelling of --tar-path")
    for action in p._actions:  # flags defined without help get Kaniko's meaning, in snapfs's words
        if action.help is None and action.option_strings:
            action.help = HELP.get(max(action.option_strings, key=len))
    no_push = os.environ.get("KANIKO_NO_PUSH")
    if no_push in _GO_TRUE:  # a default, so that --no-push=false on the command line still wins
        p.set_defaults(no_push=True)


def apply(args: argparse.Namespace, environ=None) -> None:
    """Check and resolve these flags and Kaniko's variables into ``args`` (before snapfs.cli.build reads it).

    Raises UsageError / NotSupportedError for what cannot be honoured; logs what is honoured differently.
    """
    env = os.environ if environ is None else environ
    for old, new in (getattr(args, "_deprecated", None) or {}).items():
        log.warning("%s is deprecated (as in Kaniko): use %s", old, new)
    if args.force_build_metadata:
        raise NotSupportedError("--force-build-metadata (a layer for every metadata instruction) is not supported "
                                "yet")
    platform = args.custom_platform or ""
    if "," in platform:
        raise NotSupportedError(f"--custom-platform {platform}: one platform per build, as in Kaniko; "
                                "multi-platform builds are not supported yet")
    if args.image_fs_extract_retry < 0:
        raise UsageError("--image-fs-extract-retry must not be negative")
    if args.image_fs_extract_retry:
        args.image_download_retry = max(args.image_download_retry, args.image_fs_extract_retry)
        log.info("--image-fs-extract-retry %d: base layers are downloaded and verified before extraction, so a "
                 "failed download is what is retried (--image-download-retry %d); extracting verified blobs is "
                 "not retried", args.image_fs_extract_retry, args.image_download_retry)
    if args.bucket:
        _bucket(args)
    _environment(args, env)


def _bucket(args: argparse.Namespace) -> None:
    # Kaniko's rule (resolveSourceContext): the bucket replaces a context that is empty or remote. Its default
    # /workspace/ counts as unset here: Kaniko would ignore the bucket and build /workspace/, never the intent.
    source = args.bucket if "://" in args.bucket else f"gs://{args.bucket}"
    if args.context not in ("", "/workspace/") and "://" not in args.context:
        raise UsageError(f"--bucket {args.bucket} and the local --context {args.context}: give one of them")
    log.info("--bucket %s: the context is %s", args.bucket, source)
    args.context = source


def _environment(args: argparse.Namespace, env) -> None:
    value = env.get("KANIKO_NO_PUSH")
    if value is not None:
        if value not in _GO_TRUE + _GO_FALSE:
            raise UsageError(f"KANIKO_NO_PUSH={value!r}: expected true or false")
        if value in _GO_TRUE:
            log.info("KANIKO_NO_PUSH=%s: %s", value, "the image is not pushed" if args.no_push else
                     "ignored, --no-push=false was given")
        elif args.no_push:
            log.info("KANIKO_NO_PUSH=%s: ignored, --no-push was given", value)
    for var, dest in (("KANIKO_REGISTRY_MIRROR", "registry_mirror"), ("KANIKO_REGISTRY_MAP", "registry_map")):
        value = env.get(var)
        if value is None:
            continue
        flag = KANIKO_ENV[var]
        if getattr(args, dest):  # Kaniko appends the variable to the flags; here the command line wins
            log.info("%s ignored: %s was given", var, flag)
        elif value:
            setattr(args, dest, [value])
            log.info("%s: %s %s", var, flag, value)
    if "KANIKO_DIR" in env:
        log.info("KANIKO_DIR has no effect: snapfs keeps its files in SNAPFS_DIR (--snapfs-dir)")
    bench = env.get("BENCHMARK_FILE")
    if bench and bench != "false":  # Kaniko's tests use "false" to turn it off
        if args.benchmark_file:
            log.info("BENCHMARK_FILE ignored: --benchmark-file was given")
        elif "://" in bench:
            log.warning("BENCHMARK_FILE=%s ignored: uploading timings to a bucket is not supported yet", bench)
        else:
            args.benchmark_file = bench
    for var in sorted(env):
        if var.startswith("KANIKO_") and var not in KANIKO_ENV:
            log.warning("%s is ignored: Kaniko's executor does not read it, nor does snapfs", var)


def finish(options, args: argparse.Namespace):
    """``options`` (a BuildOptions) with what only these flags set."""
    if not args.push_ignore_immutable_tag_errors:
        return options
    return replace(options, registry=replace(options.registry, push_ignore_immutable_tag_errors=True))
