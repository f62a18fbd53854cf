"""The ``lexigram-storage`` command line (also ``python -m lexigram_storage`` and, through the
lexigram-cli contributor, ``lexigram storage``).

Exit codes: 0 success, 1 an operation failed, 2 usage or configuration error, 130 interrupted
(Ctrl-C), 141 stdout closed by its reader (``cat ... | head``; quietly, as a command killed by
SIGPIPE). Errors are one line on stderr naming the backend and the key; ``--debug`` adds the
traceback. Output meant for scripts (``--json``) and object contents (``cat``, ``get KEY -``)
go to stdout; progress bars and errors to stderr.
"""

import asyncio
import json
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from lexigram.logging import configure_logging

from lexigram_storage.cli.doctor import probe, run_checks
from lexigram_storage.cli.output import Meter, human_size, iso, print_json
from lexigram_storage.cli.session import (
    Backends,
    ObjectRef,
    StdioRef,
    UsageError,
    open_backends,
)
from lexigram_storage.cli.transfer import copy, folder, move, sync
from lexigram_storage.errors import InvalidPathError, InvalidUploadOptionError, StorageError
from lexigram_storage.models import ObjectInfo

__all__ = ["app", "create_app", "main"]

app = typer.Typer(
    name="lexigram-storage",
    help="Blob storage from the command line: the backends of the storage: section of "
         "application.yaml (and LEX_STORAGE__* variables). Objects are NAME:key (a plain key: "
         "the default backend), local files are paths, - is stdin/stdout.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


@dataclass(frozen=True)
class Options:
    config: Path | None
    debug: bool


@app.callback()
def _options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="application.yaml to read (default: ./application.yaml).",
        dir_okay=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    # Under `lexigram storage`, lexigram-cli's own --config/--debug (given before `storage`)
    # count too: the root command's parameters.
    outer = ctx.find_root().params
    ctx.obj = Options(config=config or outer.get("config_path"),
                      debug=debug or bool(outer.get("debug")))


def _run(ctx: typer.Context, work: Callable[[Backends], Awaitable[int | None]]) -> None:
    """Open the configured backends, run *work*, close them; map errors to exit codes."""
    options: Options = ctx.obj
    code = _guarded(options, lambda: _with_backends(options, work))
    raise typer.Exit(code)


async def _with_backends(options: Options, work: Callable[[Backends], Awaitable[int | None]]
                         ) -> int:
    backends = await open_backends(options.config)
    try:
        return await work(backends) or 0
    finally:
        await backends.aclose()


def _guarded(options: Options, main: Callable[[], Awaitable[int]]) -> int:
    # lexigram logs to stdout, where a command's output goes (cat, --json): keep it quiet.
    configure_logging(level="CRITICAL")
    try:
        return asyncio.run(_coroutine(main))
    except KeyboardInterrupt:
        _error(options, "interrupted")
        return 130
    except BrokenPipeError:  # drivers report their connections' errors as StorageError
        # stdout's reader left: what is still buffered for it can never be written, and
        # flushing it at exit would raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UsageError, InvalidPathError, InvalidUploadOptionError) as exc:
        _error(options, _text(exc))
        return 2
    except StorageError as exc:
        _error(options, _text(exc))
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _error(options, f"{where}{exc.strerror or exc}")
        return 1
    except Exception as exc:  # a failure with no storage meaning: still one line (--debug: all)
        _error(options, f"{type(exc).__name__}: {_text(exc)}")
        return 1


async def _coroutine(main: Callable[[], Awaitable[int]]) -> int:
    return await main()


def _text(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())


def _error(options: Options, message: str) -> None:
    if options.debug:
        traceback.print_exc()
    sys.stderr.write(f"error: {message}\n")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


# ---------------------------------------------------------------------- backends, doctor


@app.command()
def backends(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List the configured backends: name, driver, bucket and health."""
    async def work(b: Backends) -> None:
        rows = await asyncio.gather(*(probe(b, name) for name in b.names))
        if json_output:
            print_json(rows)
            return
        for row in rows:
            health = (f"{row['status']} ({row['latency_ms']} ms)" if row["error"] is None
                      else f"{row['status']}: {row['error']}")
            mark = "*" if row["default"] else " "
            _say(f"{mark} {row['name']:<12} {row['driver']:<7} {row['bucket']:<28} {health}")
    _run(ctx, work)


@app.command()
def doctor(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Validate the configuration and health-check every backend.

    Exit 1 when a backend fails, 2 when the configuration is invalid."""
    options: Options = ctx.obj

    async def main() -> int:
        checks = await run_checks(options.config)
        if json_output:
            print_json({"ok": all(c.ok for c in checks), "checks": [c.to_dict() for c in checks]})
        else:
            for check in checks:
                _say(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.message}")
        if not checks[0].ok:
            return 2
        return 0 if all(c.ok for c in checks) else 1
    raise typer.Exit(_guarded(options, main))


# ---------------------------------------------------------------------- listing, reading


def _object_line(info: ObjectInfo, long: bool) -> str:
    if not long:
        return info.path
    return (f"{info.size:>12}  {info.last_modified:%Y-%m-%d %H:%M:%S}  "
            f"{info.content_type:<26} {info.path}")


def _object_json(info: ObjectInfo) -> dict[str, Any]:
    return {"type": "object", "key": info.path, "size": info.size,
            "content_type": info.content_type, "last_modified": iso(info.last_modified),
            "etag": info.etag}


@app.command()
def ls(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="NAME:PREFIX (default: the default backend's "
                                                "root).", show_default=False)] = "",
    long: Annotated[bool, typer.Option("--long", "-l", help="Sizes, dates and types.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r",
                                            help="Every object under the prefix.")] = False,
    json_output: JsonOption = False,
) -> None:
    """List one level under a prefix (folders end with /), or every object with -r.

    --json prints one JSON object per line."""
    async def work(b: Backends) -> int:
        ref = b.object_ref(address)
        driver = await b.get(ref.backend)
        prefix = folder(ref.key)
        if recursive:
            async for info in driver.list(prefix):
                _say(json_line(_object_json(info)) if json_output else _object_line(info, long))
            return 0
        listing = await driver.list_dir(prefix)
        if not listing.files and not listing.prefixes and prefix != ref.key:
            listing.files.append(await driver.info(ref.key))  # ls NAME:KEY of one object
        for sub in listing.prefixes:
            if json_output:
                _say(json_line({"type": "prefix", "key": sub}))
            else:
                _say(f"{'DIR':>12}  {'':19}  {'':<26} {sub}" if long else sub)
        for info in listing.files:
            _say(json_line(_object_json(info)) if json_output else _object_line(info, long))
        return 0
    _run(ctx, work)


def json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, default=str)


@app.command()
def info(ctx: typer.Context, address: Annotated[str, typer.Argument(help="NAME:KEY")],
         json_output: JsonOption = False) -> None:
    """Size, content type, etag (SHA-256), dates, cache control and metadata of an object."""
    async def work(b: Backends) -> None:
        ref = b.object_ref(address)
        found = await (await b.get(ref.backend)).info(ref.key)
        fields: dict[str, Any] = {"backend": ref.backend, "key": found.path, "size": found.size,
                  "content_type": found.content_type, "etag": found.etag,
                  "last_modified": iso(found.last_modified), "created_at": iso(found.created_at),
                  "cache_control": found.cache_control, "metadata": found.metadata or {}}
        if json_output:
            print_json(fields)
            return
        for name, value in fields.items():
            if name == "metadata":
                for meta_key, meta_value in sorted(value.items()):
                    _say(f"{'metadata.' + meta_key + ':':<15} {meta_value}")
            elif value is not None:
                _say(f"{name + ':':<15} {value}")
    _run(ctx, work)


@app.command()
def cat(ctx: typer.Context, address: Annotated[str, typer.Argument(help="NAME:KEY")]) -> None:
    """Write an object's content to stdout."""
    async def work(b: Backends) -> None:
        await copy(b, b.object_ref(address), StdioRef(), Meter(enabled=False))
    _run(ctx, work)


# ---------------------------------------------------------------------- writing, copying


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    metadata: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--metadata expects NAME=VALUE, got {pair!r}")
        metadata[name] = value
    return metadata or None


@app.command()
def put(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Local file, or - for stdin.")],
    address: Annotated[str, typer.Argument(help="NAME:KEY (NAME:dir/ keeps the file's name).")],
    content_type: Annotated[str | None, typer.Option(
        "--content-type", help="MIME type (default: guessed from the key).")] = None,
    metadata: Annotated[list[str] | None, typer.Option(
        "--metadata", "-m", help="NAME=VALUE, repeatable.")] = None,
    if_absent: Annotated[bool, typer.Option(
        "--if-absent", help="Fail (exit 1) if the object exists.")] = False,
) -> None:
    """Upload a local file (or stdin) as an object."""
    async def work(b: Backends) -> None:
        src = b.any_ref(source)
        if isinstance(src, ObjectRef):
            raise UsageError(f"put reads a local file or -, not {source!r} (use cp)")
        done = await copy(b, src, b.object_ref(address), Meter(),
                          content_type=content_type, metadata=_metadata(metadata or []),
                          if_absent=if_absent)
        _say(f"put {src} -> {done}")
    _run(ctx, work)


@app.command()
def get(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="NAME:KEY")],
    target: Annotated[str, typer.Argument(help="Local file or folder, or - for stdout.")],
) -> None:
    """Download an object to a local file (or stdout)."""
    async def work(b: Backends) -> None:
        dst = b.any_ref(target)
        if isinstance(dst, ObjectRef):
            raise UsageError(f"get writes a local file or -, not {target!r} (use cp)")
        done = await copy(b, b.object_ref(address), dst, Meter())
        if not isinstance(done, StdioRef):
            _say(f"get {address} -> {done}")
    _run(ctx, work)


@app.command()
def rm(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="NAME:KEY, or NAME:PREFIX with -r.")],
    recursive: Annotated[bool, typer.Option(
        "--recursive", "-r", help="Remove every object under the prefix (NAME: = all).")] = False,
) -> None:
    """Remove an object, or with -r every object under a prefix."""
    async def work(b: Backends) -> None:
        ref = b.object_ref(address)
        driver = await b.get(ref.backend)
        if recursive:
            count = await driver.clear(folder(ref.key))
            _say(f"removed {count} object{'s' if count != 1 else ''} under {ref.backend}:"
                 f"{folder(ref.key)}")
        else:
            await driver.delete(ref.key)
            _say(f"removed {ref}")
    _run(ctx, work)


SourceArg = Annotated[str, typer.Argument(help="NAME:KEY, a local file, or - (stdin).")]
TargetArg = Annotated[str, typer.Argument(
    help="NAME:KEY, a local file or folder, or - (stdout). NAME:dir/ keeps the source's name.")]


@app.command()
def cp(ctx: typer.Context, source: SourceArg, target: TargetArg) -> None:
    """Copy an object or file to any backend, local path or stdout.

    Within one backend the server copies. Content type, metadata and cache control are kept."""
    async def work(b: Backends) -> None:
        src, dst = b.any_ref(source), b.any_ref(target)
        done = await copy(b, src, dst, Meter())
        if not isinstance(done, StdioRef):
            _say(f"copied {src} -> {done}")
    _run(ctx, work)


@app.command()
def mv(ctx: typer.Context, source: SourceArg, target: TargetArg) -> None:
    """Move an object or file: copy, then remove the source."""
    async def work(b: Backends) -> None:
        src, dst = b.any_ref(source), b.any_ref(target)
        done = await move(b, src, dst, Meter())
        if not isinstance(done, StdioRef):
            _say(f"moved {src} -> {done}")
    _run(ctx, work)


@app.command("sync")
def sync_command(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="NAME:PREFIX or a local folder.")],
    target: Annotated[str, typer.Argument(help="NAME:PREFIX or a local folder.")],
    delete: Annotated[bool, typer.Option(
        "--delete", help="Also remove what the source does not have.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what would change; change nothing.")] = False,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-j", min=1, max=64, help="Transfers at once.")] = 4,
    json_output: JsonOption = False,
) -> None:
    """Make TARGET hold what SOURCE holds (prefixes or local folders).

    Copies what is missing or differs by size or etag, keeping content type and metadata.
    Safe to interrupt and run again."""
    async def work(b: Backends) -> int:
        src, dst = b.any_ref(source), b.any_ref(target)
        if isinstance(src, StdioRef) or isinstance(dst, StdioRef):
            raise UsageError("sync works on folders and prefixes, not -")
        verb = {"copy": "would copy", "delete": "would delete"} if dry_run else {}

        def report(action: str, what: str) -> None:
            if action == "failed":
                sys.stderr.write(f"error: {what}\n")
            elif not json_output:
                _say(f"{verb.get(action, action)} {what}")

        result = await sync(b, src, dst, Meter(), delete=delete, dry_run=dry_run,
                            concurrency=concurrency, report=report)
        if json_output:
            print_json(result.to_dict())
        else:
            copied = "would copy" if dry_run else "copied"
            _say(f"{copied} {len(result.copied)} ({human_size(result.bytes)}), "
                 f"{'would delete' if dry_run else 'deleted'} {len(result.deleted)}, "
                 f"unchanged {result.unchanged}, failed {len(result.failed)}")
        return 1 if result.failed else 0
    _run(ctx, work)


# ---------------------------------------------------------------------- URLs


_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    if text.isdigit():
        return timedelta(seconds=int(text))
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"--expires expects a duration like 90s, 15m, 1h30m or 7d, got {text!r}")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


@app.command()
def presign(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="NAME:KEY")],
    expires: Annotated[str, typer.Option("--expires", help="Validity: 90s, 15m, 1h, 7d.")] = "1h",
    method: Annotated[str, typer.Option("--method", help="GET or PUT.")] = "GET",
) -> None:
    """Print a temporary signed URL for downloading (GET) or uploading (PUT) an object."""
    async def work(b: Backends) -> None:
        verb = method.upper()
        if verb not in ("GET", "PUT"):
            raise UsageError(f"--method must be GET or PUT, got {method!r}")
        ref = b.object_ref(address)
        driver = await b.get(ref.backend)
        _say(await driver.get_presigned_url(ref.key, expires_in=_duration(expires), method=verb))
    _run(ctx, work)


def create_app() -> typer.Typer:
    """The command group (lexigram-cli's contributor mounts it as ``lexigram storage``)."""
    return app


def main() -> None:
    """The ``lexigram-storage`` console script."""
    app(prog_name="lexigram-storage")

