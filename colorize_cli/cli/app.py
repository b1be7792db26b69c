"""The ``colorize`` command line: a thin layer over the library (torch is imported only inside commands)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

from ..common.version import __version__

DEFAULT_COMMAND = "run"
#: fewer calibration photos than this get a warning from `colorize calibrate`
MIN_CALIBRATION_PHOTOS = 64


#: the default command's options that `colorize --help` shows
MAIN_RUN_OPTIONS = ("samples", "model", "output", "separate", "gallery", "vividness", "fmt", "device", "overwrite",
                    "as_json")


class DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to the default command.

    So ``colorize ./old_photos`` and ``colorize train vae ...`` both work; a folder literally named like a
    subcommand stays reachable as ``./train``.
    """

    def parse_args(self, ctx, args):
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version", "-V"):
            # `colorize --device cpu pick PHOTO 3`: the options belong to the command that follows
            named = next((i for i, a in enumerate(args) if a in self.commands and a != DEFAULT_COMMAND), None)
            if named is not None:
                raise click.UsageError(f"options go after the command: colorize {args[named]} "
                                       f"{' '.join(args[named + 1:])} {' '.join(args[:named])}".replace("  ", " "),
                                       ctx)
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version", "-V"):
            args = [DEFAULT_COMMAND, *args]
        elif not args and not ctx.resilient_parsing:   # (shell completion of the first word: see below)
            args = [DEFAULT_COMMAND]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, "PATH... [OPTIONS]  |  colorize COMMAND [ARGS]...")

    def format_help(self, ctx, formatter):
        super().format_help(ctx, formatter)
        # how to colorize, on the first screen: the default command's main options (all: colorize run --help)
        run = self.commands.get(DEFAULT_COMMAND)
        if run is None:
            return
        rows = [p.get_help_record(ctx) for p in run.params
                if isinstance(p, click.Option) and p.name in MAIN_RUN_OPTIONS]
        with formatter.section("Colorizing options (all of them: colorize run --help)"):
            formatter.write_dl([r for r in rows if r])

    def shell_complete(self, ctx, incomplete):
        # the first word is a subcommand or a photo/folder for the default command: offer both
        from click.shell_completion import CompletionItem

        return [*super().shell_complete(ctx, incomplete), CompletionItem(incomplete, type="file")]


class SheetSize(click.ParamType):
    """--sheet-size: a number of pixels (>= 32), or ``full`` (None)."""

    name = "PX|full"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "full":
            return None
        try:
            px = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of pixels nor 'full'", param, ctx)
        if px < 32:
            self.fail(f"{px} px is too small (at least 32)", param, ctx)
        return px


def _device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu, cuda or cuda:N")(f)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "auto_envvar_prefix": "COLORIZE"})
@click.version_option(__version__, "-V", "--version", prog_name="colorize")
def main():
    """Diverse colorizations of black-and-white photos (Deshpande et al., CVPR 2017).

    \b
    colorize PATH... [OPTIONS]         colorize photos and folders (options: colorize run --help)
    colorize PATH... --gallery         ... and a page to choose samples on (colorized.html)
    colorize pick PHOTO N...           chosen samples at full resolution (or --from picks.json)
    colorize info FILE...              is it a colorization? of what, by which model
    colorize models                    the bundled models
    colorize train vae|mdn DATA ...    the paper's two training stages (torchrun for several GPUs)
    colorize evaluate DATA ...         metrics on held-out colour photos

    Every option can also be set in the environment:
    COLORIZE_<OPTION> for colorizing (COLORIZE_SAMPLES=4), COLORIZE_<COMMAND>_<OPTION> for the others
    (COLORIZE_TRAIN_VAE_EPOCHS=20).
    """
    # Pillow's warnings about a file's headers ("Corrupt EXIF data") name no file; that file's own line (an
    # error, or the decoder's warning) says what matters
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


def _resolve_device(spec: str):
    from ..model.device import DeviceError, resolve_device

    try:
        return resolve_device(spec)
    except DeviceError as err:
        raise click.BadParameter(str(err), param_hint="--device") from err


# ------------------------------------------------------------------------------ shared by commands


class _RichReporter:
    """Training progress: a rich bar on a terminal, plain lines otherwise (logs, cron)."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal

    def log(self, message: str) -> None:
        if self.interactive:
            self.console.print(message, highlight=False, markup=False)
        else:
            click.echo(message, err=True)

    warn = log

    def progress(self, total: int, description: str):
        if not self.interactive:
            return _PlainProgress(total, description)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                        console=self.console, transient=True)
        prog.start()
        task = prog.add_task(description, total=total, loss=float("nan"))

        class Handle:
            def advance(self, n=1, **info):
                prog.update(task, advance=n, **info)

            def close(self):
                prog.stop()

        return Handle()


class _PlainProgress:
    def __init__(self, total: int, description: str):
        self.total, self.description, self.count = total, description, 0
        self.step = max(total // 10, 1)

    def advance(self, n=1, **info):
        self.count += n
        # a line each time the count passes a tenth (advances come in batches, so it rarely lands on one)
        if self.count // self.step > (self.count - n) // self.step and self.count < self.total:
            extra = " ".join(f"{k} {v:.4f}" for k, v in info.items())
            click.echo(f"{self.description}: {self.count}/{self.total} {extra}", err=True)

    def close(self):
        pass


def _bf16_default(bf16, device) -> bool:
    from ..model.device import cpu_has_fast_bf16

    if bf16 is not None:
        return bf16
    return device.type == "cuda" or cpu_has_fast_bf16()


def _check_output_dir(output: Path | None) -> None:
    """--output must be (or be creatable as) a folder: a path inside a file is a usage error, said once,
    not a failure for every input."""
    if output is None:
        return
    for folder in (output, *output.parents):
        if os.path.lexists(folder):
            if not folder.is_dir():
                what = "is a file" if folder == output else f"is inside {folder}, which is not a folder"
                raise click.UsageError(f"--output {output} {what}")
            return
