"""The batch command's console side: progress, log lines, JSON lines, the summary and the exit code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from ..common.process import paused_collector

if TYPE_CHECKING:
    from ..model.colorizer import LoadOptions
    from .plan import BatchOptions

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
#: torch.compile's backend for --compile
COMPILE_BACKEND = "inductor"


def _err(message: str) -> None:
    click.echo(f"colorize: {message}", err=True)


@dataclass
class RunOptions:
    """Everything the batch command was asked: what to write (``batch``), which model to load (``model``),
    and how this run talks and where it runs."""

    batch: "BatchOptions"
    model: "LoadOptions"
    recursive: bool = True
    dry_run: bool = False
    as_json: bool = False
    quiet: bool = False
    debug: bool = False
    gallery: bool = False              # also write colorized.html (gallery.py)
    ray: bool = False                  # run on a Ray cluster (ray_engine): RAY_ADDRESS, else a local Ray
    ray_actors: int | None = None      # colorizing actors (default: one per GPU, else per few CPUs)


def run_batch_command(paths: list[str], run: RunOptions) -> int:
    opts, quiet, as_json, debug = run.batch, run.quiet, run.as_json, run.debug
    samples = opts.samples

    def load_colorizer():
        from ..model.device import DeviceError

        try:
            with paused_collector():
                colorizer = run.model.load()
        except DeviceError as err:
            raise _UsageFailure(str(err)) from err
        except (FileNotFoundError, RuntimeError, ValueError) as err:
            if debug:
                traceback.print_exc()
            raise _UsageFailure(str(err)) from err
        if run.model.compile_backend is not None:
            from .batch import default_batch_size

            if not quiet and not as_json:
                _err("compiling the networks (torch.compile; a minute or so)")
            try:
                seconds = colorizer.warm_up(opts.batch_size or default_batch_size(colorizer.device.type), samples)
            except RuntimeError as err:   # torch's compiler errors (no C++ compiler, no Triton...) are RuntimeErrors
                if debug:
                    traceback.print_exc()
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise _UsageFailure(f"--compile failed: {first_line[:300]}") from err
            if not quiet and not as_json:
                _err(f"compiled in {seconds:.0f} s")
        return colorizer

    _end_like_ctrl_c_on((signal.SIGTERM, getattr(signal, "SIGHUP", None)))
    usage_errors: tuple = (_UsageFailure,)
    if run.ray:
        from .ray import RayUnavailable, run_paths_on_ray

        usage_errors = (_UsageFailure, RayUnavailable)   # no cluster, or no GPU in it: found when it starts
        try:
            found, results = run_paths_on_ray(paths, run.model, opts, run.recursive, run.ray_actors)
        except RayUnavailable as err:
            _err(f"error: {err}")
            return EXIT_USAGE
    else:
        with paused_collector():   # the model's modules
            from .batch import run_paths

        found, results = run_paths(paths, load_colorizer, opts, run.recursive)
    for missing in found.missing:
        _err(f"error: {_printable(missing)}: no such file or folder")
    for line in found.unreadable:
        _err(f"error: {_printable(line)}")
    for loop in found.loops:
        _err(f"skipped {_printable(loop)}: a link to a folder already walked (a loop or a duplicate)")
    if found.linked and not quiet and not as_json:
        _err(f"followed {found.linked} symlinked folder{'s' if found.linked != 1 else ''}")
    if found.missing and not found.items:
        return EXIT_USAGE   # nothing given exists: a usage error; otherwise the rest is done, exit 1
    if run.dry_run:
        return _dry_run(found, opts, as_json)

    console = None
    if not quiet and not as_json:
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            console = None
    interactive = console is not None
    counts = {"done": 0, "skipped": 0, "failed": 0}
    skipped: set[str] = set()   # inputs skipped as done (their outputs exist)
    t0 = time.perf_counter()
    progress = task = None
    if interactive:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("colorizing"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=console, transient=True)
        progress.start()
        task = progress.add_task("colorizing", total=len(found.items), rate="-")
    from ..files import native

    # the local engine decodes here: native decoders' stderr lines become the inputs' own (native.py)
    capturing = contextlib.ExitStack()
    if not run.ray:
        capturing.enter_context(native.capture())
    try:
        for result in results:
            counts[result.status] += 1
            if result.status == "skipped" and not result.error:
                skipped.add(result.input)
            if as_json:
                # one line per input as soon as it is done, also into a pipe (`| jq`, a watcher)
                click.echo(json.dumps(result.to_json()))
                sys.stdout.flush()
            said = _decoder_said(result.warnings)
            if result.status == "failed":
                line = f"{_printable(result.input)}: {result.error}" + (f" ({said})" if said else "")
                (progress.console.print(f"[red]error[/red] {line}", highlight=False) if interactive
                 else _err(f"error: {line}"))
            elif not quiet and not as_json and not interactive:
                verb = ("colorized" if result.status == "done"
                        else f"skipped ({result.error or 'exists'})")
                click.echo(f"{verb} {_printable(result.input)} -> "
                           f"{_printable(result.outputs[-1]) if result.outputs else ''}"
                           + (f" (warning: {said})" if said else ""), err=True)
            elif said and not quiet:
                line = f"{_printable(result.input)}: {said} (colorized anyway)"
                (progress.console.print(f"[yellow]warning[/yellow] {line}", highlight=False) if interactive
                 else _err(f"warning: {line}"))
            if interactive:
                elapsed = time.perf_counter() - t0
                rate = f"{counts['done'] / elapsed:.1f}" if elapsed > 0 and counts["done"] else "-"
                progress.update(task, advance=1, rate=rate)
    except usage_errors as err:
        if progress is not None:
            progress.stop()
        _err(f"error: {err}")
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        if progress is not None:
            progress.stop()
        if run.ray:   # the actors stop with the job; then their claims and temporaries are swept
            from .ray import stop

            stop(it.sheet.parent for it in found.items)
        exit_interrupted(err)
    finally:
        if progress is not None:
            progress.stop()
        capturing.close()
    elapsed = time.perf_counter() - t0
    _summary(console, counts, found.ignored, elapsed, quiet or as_json)
    if counts["skipped"] and not opts.overwrite and not quiet:
        _say_made_otherwise(found, skipped, run)
    page_failed = run.gallery and not _write_gallery(found, run, quiet or as_json)
    return (EXIT_SOME_FAILED if counts["failed"] or found.missing or found.unreadable or page_failed
            else EXIT_OK)


def _say_made_otherwise(found, skipped: set[str], run: RunOptions) -> None:
    """One line when skipped photos' outputs were made with other options than this run's: a rerun with
    --samples 1 after a run of 8 would otherwise say nothing but "skipped"."""
    from ..model.registry import model_name, resolve_model
    from .plan import made_otherwise

    try:
        model = model_name(resolve_model(run.model.model))
    except (OSError, ValueError):
        model = None
    differing = [(it, why) for it in found.items if str(it.path) in skipped
                 for why in [made_otherwise(it, run.batch, model)] if why]
    if differing:
        it, why = differing[0]
        n = len(differing)
        _err(f"{n} skipped photo{'s' if n != 1 else ''} had outputs made with other options "
             f"({_printable(it.path.name)}: {why}): --overwrite redoes them")


def _write_gallery(found, run: RunOptions, silent: bool) -> bool:
    from ..files import gallery

    opts = run.batch
    # what `colorize pick` needs to redo this run's samples: only what differs from its defaults
    options = {"--model": run.model.model if run.model.model not in (None, "general") else None,
               "--seed": opts.seed if opts.seed else None,
               "--samples": opts.samples if opts.samples != 8 else None,
               "--vividness": opts.vividness if opts.vividness != 1.0 else None,
               "--format": opts.fmt if opts.fmt != "auto" else None,
               "--quality": opts.quality,
               "--output": os.path.abspath(opts.output_dir) if opts.output_dir is not None else None}
    try:
        page = gallery.write_page(found.items, gallery.page_folder(found.items, opts.output_dir), options,
                                  opts.samples)
    except OSError as err:
        _err(f"error: cannot write the gallery page: {err.strerror or err}")
        return False
    if page is not None and not silent:
        _err(f"gallery: {_printable(str(page))}")
    return True


def _decoder_said(warnings: list[str]) -> str:
    """A decoder's messages about one file, as part of its one line."""
    unique = list(dict.fromkeys(w.strip() for w in warnings if w.strip()))
    text = "; ".join(unique[:3]) + ("; ..." if len(unique) > 3 else "")
    return _printable(text)


def _dry_run(found, opts, as_json: bool) -> int:
    """What a run would do, one line (or JSON object) per input on stdout; nothing is written or loaded."""
    from .plan import plan_status

    for item in found.items:
        status, detail = plan_status(item, opts)
        if as_json:
            click.echo(json.dumps({"input": str(item.path), "would": status, "outputs": detail}))
        else:
            target = ", ".join(_printable(p) for p in detail) if isinstance(detail, list) else detail
            click.echo(f"{status}\t{_printable(str(item.path))}\t{target}")
    return EXIT_OK


def _printable(name: str) -> str:
    """A path for a one-line message: control characters (a newline in a file name) escaped."""
    from ..common.names import readable

    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in readable(name))


class _UsageFailure(Exception):
    pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP (timeout, systemd, cron's killers): ended like Ctrl-C, with exit 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_interrupted(err: KeyboardInterrupt) -> None:
    """End the process after Ctrl-C, SIGTERM or SIGHUP: this process's temporaries removed, one line, exit
    128 + the signal. Exits at once: queued writes in the pool's threads would otherwise run to the end."""
    from ..common.atomic import remove_live_temporaries

    remove_live_temporaries()
    signum = err.signum if isinstance(err, _Terminated) else signal.SIGINT
    _err(f"interrupted ({signal.Signals(signum).name}): finished outputs are kept; rerun to do the rest")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def interruptible():
    """SIGTERM and SIGHUP end the block like Ctrl-C, and any of them ends the process as ``exit_interrupted``
    says (for commands other than a run: `colorize pick`)."""
    _end_like_ctrl_c_on((signal.SIGTERM, getattr(signal, "SIGHUP", None)))
    try:
        yield
    except KeyboardInterrupt as err:
        exit_interrupted(err)


def _end_like_ctrl_c_on(signals) -> None:
    def handler(signum, frame):
        raise _Terminated(signum)

    for sig in signals:
        if sig is not None:
            try:
                signal.signal(sig, handler)
            except ValueError:   # not the main thread (a library caller's worker): leave the signals alone
                return


def _summary(console, counts: dict, ignored: int, elapsed: float, silent: bool) -> None:
    rate = counts["done"] / elapsed if elapsed > 0 else 0.0
    if console is not None:
        from rich.table import Table

        table = Table(title="colorize", show_header=True)
        for col in ("colorized", "skipped", "failed", "ignored", "seconds", "img/s"):
            table.add_column(col, justify="right")
        table.add_row(str(counts["done"]), str(counts["skipped"]), str(counts["failed"]), str(ignored),
                      f"{elapsed:.1f}", f"{rate:.2f}")
        console.print(table)
    elif not silent:
        click.echo(f"colorize: {counts['done']} colorized, {counts['skipped']} skipped, {counts['failed']} failed, "
                   f"{ignored} ignored (not images, or earlier outputs) in {elapsed:.1f} s ({rate:.2f} img/s)", err=True)
