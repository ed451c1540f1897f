"""``snapfs.build``: the whole pipeline from a Dockerfile and a context to a written image.

Dockerfile -> plan (stages, scopes) -> per stage: base image unpacked -> steps (executor) -> image -> outputs.
Outputs are written only when every needed stage built; a failed build leaves no output and no tag.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from snapfs.cache.session import CacheOptions
from snapfs.engine import lifecycle
from snapfs.engine.compress import check_compression
from snapfs.engine.layer import source_date_epoch
from snapfs.engine.rootfs import RootFS
from snapfs.errors import BuildError, InputError, RunFailedError, SnapfsError, UsageError
from snapfs.frontend.dockerignore import load_dockerignore
from snapfs.frontend.plan import Plan, expand_instruction, onbuild_instructions, plan_build, stage_scope
from snapfs.image.blobstore import BlobStore
from snapfs.image.model import Image, Layer, canonical_json, convert, empty_image
from snapfs.image.reference import Reference
from snapfs.image.registry.client import RegistryClient, RegistryOptions
from snapfs.image.transports import OutputOptions, check_destinations, is_local_spec, load_image, write_outputs
from snapfs.image.warmrefs import WarmRefs
from snapfs.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST
from snapfs.platforms import Platform
from snapfs.progress import size_text
from snapfs.redact import redact_url
from . import stage as executor, imageconfig, incontainer, stageroot
from .copier import Source
from .stage import StageOptions, StageState, StepTiming

log = logging.getLogger("snapfs.build")

MAX_DOCKERFILE = 16 << 20


@dataclass(frozen=True)
class BuildOptions:
    """Kaniko's executor flags, as values. See :mod:`snapfs.cli.build` for the command line."""

    context: str = "/workspace/"
    dockerfile: str = "Dockerfile"
    context_sub_path: str = ""
    git_options: str = ""
    build_args: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    outputs: OutputOptions = field(default_factory=OutputOptions)
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    snapshot_mode: str = "full"
    single_snapshot: bool = False
    reproducible: bool = False
    compression: str = "gzip"
    compression_level: int | None = None
    image_format: str = "oci"
    labels: tuple[tuple[str, str], ...] = ()
    custom_platform: str | None = None
    cache_dir: str = ""
    work_dir: str = ""
    ignore_paths: tuple[str, ...] = ()
    ignore_var_run: bool = True
    secrets: tuple[tuple[str, str], ...] = ()
    benchmark_file: str | None = None
    isolation: str = "auto"  # auto | namespaces | none: how RUN steps are isolated
    in_place: bool | None = None  # build over "/" like Kaniko (None: when running from the executor image)
    snapfs_dir: str = ""  # in-place mode: the builder's own directory, never snapshotted or cleaned
    cleanup: bool = False  # in-place mode: clean the root once the build is done
    cache: CacheOptions = field(default_factory=CacheOptions)  # the layer cache (--cache, --cache-repo, ...)
    log_run_output: bool = False  # RUN output as log records, one per line with its step (--log-format json)
    platform_mismatch: str = "error"  # a single-platform base for another platform than asked: error | warn


@dataclass(frozen=True)
class BuildResult:
    digest: str
    image: Image
    layers: tuple[Layer, ...]
    timings: tuple[StepTiming, ...]
    seconds: float
    unpack: float = 0.0  # seconds spent unpacking base layers (0: every base came from the cache)


@dataclass
class _Stage:
    index: int
    state: StageState
    image: Image | None = None
    ref: Reference | None = None  # the registry base, for cross-repository mounts


def default_cache_dir() -> str:
    return os.environ.get("SNAPFS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "snapfs")


def _cache_writable(path: str) -> bool:
    """Can this build write to its cache directory? Not when it is a read-only volume (EROFS) or a directory
    this user may only read (EACCES, EPERM); any other failure is an error of its own."""
    try:
        lifecycle.private_dir(path, tighten=False)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return False
        raise
    os.close(fd)
    os.unlink(probe)
    return True


def build(options: BuildOptions) -> BuildResult:
    """Build the image ``options`` describe and write its outputs; raises SnapfsError on any failure."""
    t0 = time.perf_counter()
    _check(options)
    snapfs_dir = options.snapfs_dir or os.environ.get("SNAPFS_DIR") or incontainer.DEFAULT_SNAPFS_DIR
    in_place = options.in_place if options.in_place is not None else incontainer.build_in_place(snapfs_dir)
    credentials = None
    if in_place:
        # Before anything else runs: the registry credentials leave the filesystem for this process's memory.
        credentials = incontainer.CredentialVault.seal(snapfs_dir=snapfs_dir).credentials
        lifecycle.private_dir(os.path.join(snapfs_dir, "tmp"))
        options = replace(options, work_dir=options.work_dir or os.path.join(snapfs_dir, "tmp"),
                          cache_dir=options.cache_dir or os.path.join(snapfs_dir, "cache"))
    # Kaniko's push permission check: a 401 or an unreachable registry fails now, not after the whole build.
    check_destinations(options.outputs, options.registry, credentials=credentials)
    # Sweeps scratch that killed builds left behind, then makes this build's own (0700, owner in its name).
    scratch = lifecycle.new_build_scratch(options.work_dir or None)
    ctx = None
    try:
        ctx_root, dockerfile, ctx = _context(options, scratch)
        text = _read_dockerfile(dockerfile)
        plan = plan_build(text, build_args=dict(options.build_args), target=options.target,
                          target_platform=options.custom_platform, file=os.path.basename(dockerfile))
        for name in plan.unused_build_args:
            log.warning("build argument %s was not consumed by any stage", name)
        from .steps import check_runs  # RUN options the chosen runner cannot give fail now, not at their step

        check_runs(plan, in_place=bool(in_place), isolation=options.isolation)
        ignore = load_dockerignore(ctx_root, dockerfile=dockerfile)
        builder = _Builder(options, plan, scratch, Source(ctx_root, True, ignore if ignore.patterns else None),
                           in_place=snapfs_dir if in_place else None, credentials=credentials)
        try:
            image, layers, timings, mount_from = builder.run()
        except BaseException:
            builder.close_cache(ok=False)
            raise
        finally:
            with lifecycle.shielded():  # a signal now would leave stage roots mounted
                builder.close_client()
                builder.release()
        try:
            with builder.client_for_push() as client:
                digest = write_outputs(image, options.outputs, client=client, mount_from=mount_from)
        except OSError as exc:
            builder.close_cache(ok=False)
            raise _full_disk(exc, [p for p in (options.outputs.oci_layout_path, options.outputs.tar_path) if p])
        except BaseException:
            builder.close_cache(ok=False)
            raise
        builder.close_cache(ok=True)  # waits for the cache stores still running (their blobs are in scratch)
        if in_place and options.cleanup:
            incontainer.clean_root("/", builder.keep)
        seconds = time.perf_counter() - t0
        result = BuildResult(digest, image, tuple(layers), tuple(timings), seconds, unpack=builder.unpack_seconds)
        _summary(result)
        if options.benchmark_file:
            _write_benchmark(options.benchmark_file, result)
        return result
    except OSError as exc:  # a full disk while unpacking a base: say which filesystem filled
        raise _full_disk(exc, [scratch, options.cache_dir or default_cache_dir()])
    finally:
        with lifecycle.shielded():
            lifecycle.remove_tree(scratch)
            if ctx is not None:
                ctx.cleanup()


def _full_disk(exc: OSError, places: list[str]) -> OSError:
    """``exc``, or for a full disk that a failed write() reported without a file name, the same error naming
    which of ``places`` (where that part of the build writes) filled."""
    full = lifecycle.full_place(exc, places)
    return exc if full is None else OSError(exc.errno, exc.strerror, full)


def _check(o: BuildOptions) -> None:
    if o.snapshot_mode not in ("full", "redo", "time"):
        raise UsageError(f"unknown --snapshot-mode {o.snapshot_mode!r} (choose full, redo or time)")
    if o.image_format not in ("oci", "docker"):
        raise UsageError(f"unknown --image-format {o.image_format!r} (choose oci or docker)")
    if o.image_format == "docker" and o.compression != "gzip":
        raise UsageError("--image-format docker needs gzip layers (Docker manifests cannot name zstd)")
    check_compression(o.compression, o.compression_level)  # before any work, not when the first layer is written
    if o.platform_mismatch not in ("error", "warn"):
        raise UsageError(f"unknown --platform-mismatch {o.platform_mismatch!r} (choose error or warn)")
    for flag, path in (("--image-name-with-digest-file", o.outputs.image_name_with_digest_file),
                       ("--image-name-tag-with-digest-file", o.outputs.image_name_tag_with_digest_file)):
        if path and not o.outputs.destinations:  # Kaniko: it names the destinations; without one it is an error
            raise UsageError(f"{flag} needs a --destination (the file lists each destination with the digest)")
    if not o.outputs.destinations and not o.outputs.no_push and not (o.outputs.tar_path or o.outputs.oci_layout_path):
        raise UsageError("no output: give --destination, --tar-path or --oci-layout-path (or --no-push)")
    if o.cache.enabled and not o.cache.repo and not o.outputs.destinations:
        raise UsageError("--cache needs --cache-repo (a registry repository or oci:DIR), or a --destination whose "
                         "repository/cache it then uses")
    if o.cache.ttl <= 0:
        raise UsageError("--cache-ttl must be positive")


def _context(o: BuildOptions, scratch: str):
    """The context directory and the Dockerfile's local path (fetching remote contexts). Every context kind,
    a local directory included, goes through :mod:`snapfs.context.resolve`: the Dockerfile resolved inside it."""
    from snapfs.context.resolve import fetch_context, locate_dockerfile

    ctx = fetch_context(o.context, workdir=scratch, sub_path=o.context_sub_path, git_options=o.git_options)
    return ctx.root, locate_dockerfile(ctx, o.dockerfile, workdir=scratch), ctx


def _read_dockerfile(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCKERFILE + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read Dockerfile: {exc.strerror}") from None
    if len(data) > MAX_DOCKERFILE:
        raise InputError(f"{path}: Dockerfile larger than {MAX_DOCKERFILE} bytes")
    return data.decode("utf-8", "surrogateescape")


def _created(o: BuildOptions) -> tuple[str, int | None]:
    epoch = source_date_epoch()
    if o.reproducible and epoch is None:
        epoch = 0
    when = datetime.fromtimestamp(epoch, timezone.utc) if epoch is not None else datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), epoch


class _Builder:
    def __init__(self, options: BuildOptions, plan: Plan, scratch: str, context: Source, *,
                 in_place: str | None = None, credentials=None) -> None:
        self.o, self.plan, self.scratch, self.context = options, plan, scratch, context
        self.in_place, self.credentials = in_place, credentials  # in_place: the snapfs dir, or None
        self.cache_dir = options.cache_dir or default_cache_dir()
        # A pre-warmed cache mounted read-only into many builds: bases are read from it (``shared``), anything
        # new (blobs, unpacked bases, RUN caches) goes to a cache in this build's scratch directory.
        self.shared_cache: str | None = None
        if not _cache_writable(self.cache_dir):
            self.shared_cache, self.cache_dir = self.cache_dir, os.path.join(scratch, "cache")
            log.info("cache directory %s is read-only: base images are read from it, anything new is kept in "
                     "the build's scratch directory", self.shared_cache)
        # 0700: unpacked bases keep their setuid files; RUN caches hold whatever steps put there.
        lifecycle.private_dir(self.cache_dir, tighten=False)
        lifecycle.private_dir(os.path.join(self.cache_dir, "run-cache"))
        shared = BlobStore(os.path.join(self.shared_cache, "blobs")) if self.shared_cache else None
        self.store = BlobStore(os.path.join(self.cache_dir, "blobs"), private=True, fallback=shared)
        self.warm_refs = WarmRefs(self.shared_cache or self.cache_dir)  # tags `snapfs warm` resolved
        self.layer_dir = os.path.join(scratch, "layers")
        os.makedirs(self.layer_dir, exist_ok=True)
        self._client: RegistryClient | None = None
        self._cache_client: RegistryClient | None = None
        self.step_cache = None  # a StepCache once the first stage starts, with --cache
        self.stages: dict[int, _Stage] = {}
        self.roots: dict[int, stageroot.StageRoot] = {}
        self.scopes: dict = {}  # each built stage's final scope: a child stage inherits its ARGs
        self.overlay = not in_place and options.isolation != "none" and stageroot.overlay_available(scratch)
        self.images: dict[str, tuple[Image, str]] = {}  # COPY --from images, unpacked
        self.bases: dict[tuple[str, str], tuple[Image, Reference | None]] = {}  # (spec, platform) -> base
        self._filtered: str | None = None  # the context less .dockerignore'd files, made on first use
        created, epoch = _created(options)
        ignore = list(options.ignore_paths)
        if options.ignore_var_run:
            ignore += executor.VAR_RUN[:1]
        if in_place:  # the container's mounts, kernel filesystems and the builder itself stay out of images
            ignore = list(incontainer.ignore_list("/", in_place, extra=tuple(ignore)))
        self.keep = tuple(p.strip("/") for p in ignore if p.strip("/"))
        self.stage_copies: dict[int, str] = {}
        self.unpack_seconds = 0.0  # base layers unpacked by this build (cached bases cost nothing)
        self.stage_opts = StageOptions(
            layer_dir=self.layer_dir, compression=options.compression, compression_level=options.compression_level,
            snapshot_mode=options.snapshot_mode, single_snapshot=options.single_snapshot, epoch=epoch,
            created=created, ignore_paths=tuple(p.strip("/") for p in ignore if p.strip("/")),
            docker_media_types=options.image_format == "docker")

    # registry access, created on first use so local-only builds never touch the network stack
    def client(self) -> RegistryClient:
        if self._client is None:
            self._client = RegistryClient(self.o.registry, credentials=self.credentials)
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def cache_for(self, platform: Platform):
        """The build's layer cache (made on first use), or None without ``--cache`` or when it cannot work."""
        c = self.o.cache
        if not c.enabled:
            return None
        if self.step_cache is None:
            from snapfs.cache.session import StepCache
            from snapfs.cache.store import CacheError, open_store

            if self.o.single_snapshot:
                log.info("--cache has no effect with --single-snapshot: no layer per step to cache")
                self.o = replace(self.o, cache=replace(c, enabled=False))
                return None
            repo = c.repo or f"{self.o.outputs.destinations[0].name}/cache"

            def client() -> RegistryClient:
                # The cache must never slow a build down much: fewer retries than for the image itself.
                opts = replace(self.o.registry, request_retries=1, push_retry=0, image_download_retry=0)
                self._cache_client = RegistryClient(opts, credentials=self.credentials)
                return self._cache_client

            try:
                store = open_store(repo, client_factory=client, platform=platform)
            except CacheError as exc:
                raise UsageError(exc.message) from None
            self.step_cache = StepCache(store, c, self.store, platform)
            log.info("layer cache: %s", store.name)
        return self.step_cache

    def close_cache(self, *, ok: bool) -> None:
        if self.step_cache is not None:
            cache, self.step_cache = self.step_cache, None
            try:
                cache.close() if ok else cache.abandon()
            finally:
                if self._cache_client is not None:
                    self._cache_client.close()
                    self._cache_client = None

    def client_for_push(self):
        need = self.o.outputs.destinations and not self.o.outputs.no_push
        return RegistryClient(self.o.registry, credentials=self.credentials) if need else _NoClient()

    def run(self):
        self.check_platforms()
        total = sum(len(self.plan.stages[i].instructions) + 1 for i in self.plan.needed)
        self.step_no, self.total = 0, total
        mount_from: list[Reference] = []
        for index in self.plan.needed:
            stage = self._build_stage(index)
            if stage.ref is not None:
                mount_from.append(stage.ref)
        target = self.stages[self.plan.target]
        image = target.image
        if self.o.labels:  # --label applies to the final image only, like Kaniko
            cfg = image.config()
            inner = cfg.setdefault("config", {})
            inner["Labels"] = {**(inner.get("Labels") or {}), **dict(self.o.labels)}
            image = replace(image, config_bytes=canonical_json(imageconfig.json_safe(cfg)), raw_manifest=None)
        timings = [t for i in self.plan.needed for t in self.stages[i].state.timings]
        return image, target.state.layers, timings, mount_from

    def _platform(self, stage) -> Platform:
        """The stage's ``FROM --platform`` (expanded), else the build's target platform."""
        return Platform.parse(stage.platform) if stage.platform else self.plan.target_platform

    def _base(self, stage) -> tuple[Image, Reference | None]:
        if stage.base_stage is not None:
            return self.stages[stage.base_stage].image, None
        if stage.base.lower() == "scratch":
            return empty_image(self._platform(stage), oci=self.o.image_format == "oci"), None
        return self._image(stage.base, self._platform(stage))

    def _image(self, spec: str, platform: Platform) -> tuple[Image, Reference | None]:
        """A base image, loaded once per build (the platform check loads them before the first step)."""
        key = (spec, str(platform))
        if key not in self.bases:
            self.bases[key] = load_image(spec, store=self.store, client=None if is_local_spec(spec) else self.client(),
                                         platform=platform, warm_refs=self.warm_refs)
        return self.bases[key]

    def check_platforms(self, *, binfmt_dir: str | None = None) -> None:
        """Before any step: every base's platform against the one asked for, and emulation for stages whose RUN
        steps execute foreign binaries.

        A single-platform base for another platform than ``--custom-platform`` or ``FROM --platform`` asked is
        an error (``--platform-mismatch=warn``: a warning, and the base is used as it is; its config keeps its
        own platform, so the image says what it holds). Without an explicit request the host is only a default,
        and the base is taken as it is. RUN steps run the base's binaries: for a foreign architecture they need
        a binfmt_misc handler (:mod:`snapfs.run.emulation`)."""
        from snapfs.frontend import instructions as ins
        from snapfs.run.emulation import BINFMT_DIR, check_can_run

        runs_as: dict[int, Platform] = {}  # the platform of each stage's binaries
        for index in self.plan.needed:
            stage = self.plan.stages[index]
            want = self._platform(stage)
            if stage.base_stage is not None:
                have = runs_as.get(stage.base_stage, want)
            elif stage.base.lower() == "scratch":
                have = want
            else:
                have = self._image(stage.base, want)[0].platform() or want
                asked = stage.platform or self.o.custom_platform
                if asked and not want.matches(have):
                    text = (f"base image {redact_url(stage.base)} is for {have}, not the requested {want} (a "
                            "single-platform image: no index to pick another from)")
                    if self.o.platform_mismatch != "warn":
                        raise InputError(f"{text}; --platform-mismatch=warn uses it anyway")
                    log.warning("%s; using it as it is (--platform-mismatch=warn)", text)
            runs_as[index] = have
            if any(isinstance(i, ins.Run) for i in stage.instructions):
                name = f"stage {stage.name or index}: "
                check_can_run(have, binfmt_dir=binfmt_dir or BINFMT_DIR, stage=name)

    def _build_stage(self, index: int) -> _Stage:
        stage = self.plan.stages[index]
        self._announce(f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else ""))
        base, ref = self._base(stage)
        base = convert(base, oci=self.o.image_format == "oci")
        sroot = self._stage_root(index, stage, base)
        if sroot.unpacked is not None:  # a cold base: the time it took is part of the build's, so say it
            self.unpack_seconds += sroot.unpacked.seconds
            n = sroot.unpacked.layers
            log.info("  base unpacked in %.2fs (%s, %d layer%s)", sroot.unpacked.seconds,
                     size_text(sroot.unpacked.size), n, "" if n == 1 else "s")
        cfg = imageconfig.start_stage(base.config(), platform=self._platform(stage))
        state = StageState(root=sroot.path, base=base, config=cfg, upper=sroot.upper)
        state.snapshot = executor.take(sroot.path, ignore=self.stage_opts.ignore_paths, quiescent=True)
        result = _Stage(index, state, ref=ref)
        self.stages[index] = result
        parent = self.scopes.get(stage.base_stage) if stage.base_stage is not None else None
        scope = stage_scope(self.plan, index, base_env=tuple(cfg.env()),
                            base_args=tuple(parent.args.items()) if parent is not None else ())
        # The base's ONBUILD triggers run first, whether it is an image or an earlier stage (Docker, buildah and
        # BuildKit except v0.17.0, whose regression moby/buildkit#5486 dropped them for stages).
        triggers = base.config().get("config", {}).get("OnBuild") or []
        todo = list(onbuild_instructions(triggers, escape=self.plan.escape)) + list(stage.instructions)
        cfg.inner["OnBuild"] = None  # triggers run once, in the first child
        from .steps import StageContext, StepRunner  # the RUN machinery (sandbox) only when a stage has steps

        ctx = StageContext(context=self.context, plan=self.plan, scratch=self.scratch, cache_dir=self.cache_dir,
                           in_place=self.in_place, isolation=self.o.isolation, secrets=self.o.secrets,
                           stage_opts=self.stage_opts, built_stages=frozenset(self.stages),
                           stage_source=self.stage_source, image_root=self.image_root,
                           filtered_context=self.filtered_context, log_run_output=self.o.log_run_output)
        runner = StepRunner(ctx, state)
        cached = self._stage_cache(runner, stage, index, base, todo, scope)
        for position, raw in enumerate(todo):
            instruction, scope_after = expand_instruction(raw, scope, escape=self.plan.escape, file=self.plan.file)
            self._announce(_describe(instruction))
            t = time.perf_counter()
            try:
                if cached is not None:
                    timing = cached.step(instruction, scope, scope_after, index=self.step_no, position=position,
                                         total=self.total, describe=_describe(instruction))
                else:
                    timing = runner.step(instruction, scope, scope_after, index=self.step_no)
            except SnapfsError as exc:
                full = lifecycle.full_hint([self.scratch, self.cache_dir])  # a RUN that filled the disk
                raise self._step_failed(instruction, imageconfig.json_safe(redact_url(exc.message)) + full,
                                        exit_code=exc.exit_code, status=getattr(exc, "status", None)) from None
            except OSError as exc:  # the disk, not the Dockerfile: still one line that names the step
                full = lifecycle.full_place(exc, [self.scratch, self.cache_dir])
                where = f": {exc.filename}" if exc.filename else f": {full}" if full else ""
                raise self._step_failed(instruction, f"{exc.strerror or exc}{where}") from None
            state.timings.append(timing)
            _step_done(timing, time.perf_counter() - t)
            scope = scope_after
        executor.finish_stage(state, self.stage_opts, index=self.step_no)
        sroot.freeze()
        self.scopes[index] = scope
        diff_ids = [l.diff_id for l in base.layers] + [l.diff_id for l in state.layers]
        config = imageconfig.finish(cfg, diff_ids=diff_ids, created=self.stage_opts.created)
        media = OCI_MANIFEST if self.o.image_format == "oci" else DOCKER_MANIFEST
        result.image = Image(canonical_json(config), tuple(base.layers) + tuple(state.layers), media)
        return result

    def _stage_cache(self, runner, stage, index: int, base: Image, todo: list, scope):
        """With ``--cache``: the stage's view of the cache, every step's lookup already sent."""
        cache = self.cache_for(self._platform(stage))
        if cache is None:
            return None
        from .cachestep import StageCache

        cached = StageCache(cache, runner=runner, stage_label=stage.name or str(index),
                            platform=str(self._platform(stage)),
                            base_chain=stageroot.chain_id([layer.diff_id for layer in base.layers]),
                            copy_layers=self.o.cache.copy_layers, run_layers=self.o.cache.run_layers)
        steps = []
        try:
            for raw in todo:
                instruction, after = expand_instruction(raw, scope, escape=self.plan.escape, file=self.plan.file)
                steps.append((instruction, scope))
                scope = after
        except SnapfsError:
            pass  # the step itself reports it, in order
        cached.prefetch(steps)
        return cached

    def _step_failed(self, instruction, detail: str, *, exit_code: int | None = None,
                     status: int | None = None) -> BuildError:
        """A step's failure as a BuildError whose context fields name the step; the lower error's exit code
        is kept, and a failed RUN command stays a RunFailedError with its ``status``. The location is the
        step's instruction (the lower error's own location, if any, is part of ``detail``):
        SnapfsError.message formats the line."""
        node = instruction.node
        where = dict(file=self.plan.file, line=node.start_line, column=node.column, step=self.step_no,
                     total=self.total, instruction=node.keyword)
        if status is not None:
            return RunFailedError(detail, status=status, **where)
        return BuildError(detail, exit_code=exit_code, **where)

    def _stage_root(self, index: int, stage, base: Image) -> stageroot.StageRoot:
        """Overlay over the cached base (or over the parent stage) when mounts work; else unpack."""
        name = f"stage-{index}"
        if self.in_place:  # Kaniko's way: the container's own root, emptied, then the base unpacked over it
            incontainer.clean_root("/", self.keep)
            unpacked = stageroot.unpack(base.layers, "/", keep=self.keep)
            root = stageroot.StageRoot("/", unpacked=unpacked if base.layers else None)
        elif self.overlay:
            unpacked = None
            if stage.base_stage is not None:
                lowers = self.roots[stage.base_stage].child_lowers()
            elif base.layers:
                cached, unpacked = stageroot.cached_base(base, self.cache_dir, shared=self.shared_cache)
                lowers = [cached]
            else:
                lowers = []
            root = stageroot.overlay_stage(self.scratch, name, lowers, layers=base.layers)
            if root.unpacked is None:
                root.unpacked = unpacked
        else:
            root = stageroot.plain_stage(self.scratch, name, base.layers)
        self.roots[index] = root
        return root

    def stage_source(self, index: int) -> str:
        """A finished stage's tree for COPY --from / RUN --mount from: in place, "/" has moved on, so the
        stage's image is unpacked once into the scratch directory."""
        if not self.in_place:
            return self.stages[index].state.root
        if index not in self.stage_copies:
            path = os.path.join(self.scratch, f"stage-copy-{index}")
            stageroot.unpack(self.stages[index].image.layers, path)
            self.stage_copies[index] = path
        return self.stage_copies[index]

    def image_root(self, ref: str) -> str:
        """COPY --from=<image>: the image's flattened root from the cache (unpacked once, read only)."""
        if ref not in self.images:
            image, _ = load_image(ref, store=self.store, client=None if is_local_spec(ref) else self.client(),
                                  warm_refs=self.warm_refs)
            self.images[ref] = (image, stageroot.cached_base(image, self.cache_dir, shared=self.shared_cache)[0])
        return self.images[ref][1]

    def filtered_context(self) -> str:
        """The context as a RUN bind mount sees it: without what .dockerignore excludes (copied once per build)."""
        ctx = self.context
        if ctx.ignore is None:
            return ctx.root
        if self._filtered is None:
            from .copier import copy

            target = os.path.join(self.scratch, "context-filtered")
            os.makedirs(target)
            with RootFS(target) as root:
                copy(root, Source(ctx.root, False, ctx.ignore, ctx.label), ["."], "/", what="RUN --mount")
            self._filtered = target
        return self._filtered

    def release(self) -> None:
        """Unmount every stage root (before the scratch directory is removed)."""
        for root in reversed(list(self.roots.values())):
            root.release()
        self.roots.clear()

    def _announce(self, text: str) -> None:
        self.step_no += 1
        log.info("STEP %d/%d: %s", self.step_no, self.total, text)


class _NoClient:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _describe(instruction) -> str:
    text = redact_url(instruction.node.original.split("\n", 1)[0])  # before clipping: a cut URL hides its "@"
    return text if len(text) <= 200 else text[:197] + "..."


def _step_done(t: StepTiming, wall: float) -> None:
    if t.empty:
        log.info("  done in %.2fs (no layer)", wall)
    else:
        log.info("  done in %.2fs (run %.2fs, snapshot %.2fs, layer %.2fs, %s)", wall, t.run, t.snapshot, t.layer,
                 size_text(t.layer_size))


def _summary(r: BuildResult) -> None:
    run = sum(t.run for t in r.timings)
    snap = sum(t.snapshot for t in r.timings)
    lay = sum(t.layer for t in r.timings)
    log.info("built %s in %.2fs (unpack %.2fs, run %.2fs, snapshot %.2fs, layers %.2fs; %d new layers)", r.digest,
             r.seconds, r.unpack, run, snap, lay, len(r.layers))


def _write_benchmark(path: str, r: BuildResult) -> None:
    data = {"digest": r.digest, "seconds": round(r.seconds, 4), "unpack": round(r.unpack, 4),
            "steps": [{"step": t.index, "instruction": t.instruction, "run": round(t.run, 4),
                       "snapshot": round(t.snapshot, 4), "layer": round(t.layer, 4), "layer_size": t.layer_size}
                      for t in r.timings]}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
