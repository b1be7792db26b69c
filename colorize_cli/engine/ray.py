"""Colorizing on a Ray cluster (Ray Data): the local engine's planner, stream and writer, run by a pool of
actors that each hold one loaded Colorizer.

The driver (this process) lists and plans the inputs exactly as a local run (``batch.discover`` and
``batch.plan_outputs``: the same output names, conflicts and skip rules), then streams them through
``map_batches`` to the actors. Each actor runs ``batch.colorize_items`` on its share: the same skip check,
per-input claim, decoding, model and atomic writes with provenance as a local run. Every input's result
comes back to the driver in input order, so ``--json``, the progress bar, the summary and the exit code are
the local run's. Outputs go where the inputs' paths say: on a cluster, storage every node mounts at the same
path.

Failure handling: an input that cannot be read or written is a result (``failed``), never a failed task;
an unexpected error in a batch is a ``failed`` result for each of its inputs. An actor that dies is
restarted by Ray Data (actors default to unlimited restarts and task retries) and its batch retried: the
inputs it had finished are then skipped as done, and claims it held are this run's own (``run_id``), so they
are taken over. A killed driver loses no finished output (each is renamed into place whole); a rerun does
the rest.

``ray`` is imported only here, only when ``--ray`` is asked for: the core install does not need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..model.colorizer import LoadOptions
from .batch import colorize_items, default_batch_size, run_paths
from .plan import BatchOptions, Discovery, InputItem, ItemResult

#: model batches per actor call (the local engine's stream pipelines within a call)
CALL_BATCHES = 4
#: CPUs per colorizing actor on a cluster without GPUs (each runs decoding threads and the model)
CPUS_PER_ACTOR = 4


class RayUnavailable(RuntimeError):
    """--ray without the [ray] extra, or no cluster to reach."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra: pyarrow, pandas)
    except ImportError as err:
        raise RayUnavailable(f"--ray needs the [ray] extra: pip install 'colorize-photos[ray]' ({err})") from err
    return ray


def connect() -> None:
    """Join the cluster at RAY_ADDRESS (Ray's own convention), else start a local Ray on this machine; keep
    Ray's own chatter (actor logs, progress bars) off this process's stdout and stderr."""
    ray = _import_ray()
    if not ray.is_initialized():
        # Ray's C++ core logs notices for the driver on stderr (e.g. one per restartable Ray Data actor);
        # this run reports every input's fate itself, so only fatal ones pass. The core announces that
        # setting on stderr as it starts: ray.init runs with stderr closed
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        # ray.init puts its own SIGTERM handler in (a dump, exit 15): this run's handlers (end like Ctrl-C,
        # exit 143, stop the actors, sweep their claims) stay
        handlers = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
        try:
            with _stderr_silenced():
                ray.init(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False,
                         configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise RayUnavailable(f"cannot start or reach {where}: {str(err).strip().splitlines()[0]}") from err
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    try:
                        signal.signal(sig, handler)
                    except ValueError:   # not the main thread
                        pass
    _keep_stdout_ours()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True   # results in input order, as a local run gives them
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _keep_stdout_ours() -> None:
    """Ray's driver prints the cluster's notices for the job ("(raylet) Task ... failed ... will be retried"
    when a node is lost) on stdout, which carries --json lines and nothing else: those go nowhere (each
    input's fate is reported by this run itself). Ray's private printer is wrapped where it exists."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "_colorize_quiet", False):
        return

    def quiet(data, *args, **kwargs):
        if isinstance(data, dict) and data.get("pid") == "raylet":
            return
        printer(data, *args, **kwargs)

    quiet._colorize_quiet = True
    ray_worker.print_to_stdstream = quiet


_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def stop(folders) -> None:
    """After an interrupted run: end this job's actors (a local Ray shuts down with it; a cluster's actors
    end with their driver), then sweep the claims and temporaries their processes left in ``folders``. A
    second Ctrl-C meanwhile does not turn into a traceback."""
    import ray

    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        previous = None
    try:
        if ray.is_initialized():
            with _stderr_silenced():
                ray.shutdown()
    except Exception:   # noqa: BLE001 - stopping is best effort; the sweep below still runs
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    from ..common.atomic import CLAIM_SUFFIX, remove_stale

    folders = sorted(set(folders))
    deadline = time.monotonic() + STOP_WAIT_S
    while True:   # the actors' processes end a moment after shutdown returns: their claims go when they do
        for folder in folders:
            remove_stale(folder)
        left = any(name.endswith(CLAIM_SUFFIX) for folder in folders for name in _names(folder))
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.2)


#: how long an interrupted --ray run waits for its actors' processes to end, sweeping their claims
STOP_WAIT_S = 15.0


def _names(folder) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the block (what native code writes there included)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _item_row(i: int, item: InputItem) -> dict:
    """An input as it travels to an actor: absolute paths (an actor's working folder is not the driver's)."""
    return {"i": i, "item": json.dumps({
        "path": os.path.abspath(item.path), "rel": item.rel.as_posix(), "sheet": os.path.abspath(item.sheet),
        "singles": [os.path.abspath(p) for p in item.singles], "conflict": item.conflict, "fmt": item.fmt})}


def _item_from_row(text: str) -> InputItem:
    d = json.loads(text)
    return InputItem(Path(d["path"]), Path(d["rel"]), Path(d["sheet"]), [Path(p) for p in d["singles"]],
                     d["conflict"], d["fmt"])


def _actor_class(load: LoadOptions, opts: BatchOptions, cpus: int) -> type:
    """A ColorizeActor subclass with this run's settings as class attributes: it travels with the class
    (pickled by value), not as constructor arguments in the object store, which an actor restarted after
    its node died could no longer find."""
    settings = {"load": asdict(load), "opts": asdict(replace(opts, output_dir=None)), "cpus": cpus}
    return type("ColorizeActor", (ColorizeActor,), settings)


class ColorizeActor:
    """One loaded Colorizer; colorizes a batch of planned inputs with the local engine's stream. A run uses a
    subclass carrying its settings (``_actor_class``)."""

    load: dict = {}   # LoadOptions fields
    opts: dict = {}   # BatchOptions fields
    cpus: int = 1

    def __init__(self):
        import ray
        import torch

        gpu = bool(ray.get_gpu_ids())
        if not gpu:
            torch.set_num_threads(max(self.cpus, 1))
        self.colorizer = LoadOptions(**self.load).load("cuda" if gpu else "cpu")
        self.batch_opts = BatchOptions(**{**self.opts, "output_dir": None})
        self.batch_opts.workers = max(self.cpus, 2)

    def __call__(self, batch: dict) -> dict:
        items = [_item_from_row(str(t)) for t in batch["item"]]
        try:
            results = list(colorize_items(items, self.colorizer, self.batch_opts))
        except Exception as err:   # never a failed task: every input of the batch gets a result
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            results = [ItemResult(str(it.path), "failed", error=f"colorizing failed: {reason}") for it in items]
        return {"i": np.asarray(batch["i"]), "result": np.array([json.dumps(r.to_json()) for r in results],
                                                                dtype=object)}


def _resources(ray, actors: int | None) -> tuple[int, float, float]:
    """(actors, GPUs each, CPUs each): one actor per GPU where the cluster has GPUs, else one per
    CPUS_PER_ACTOR CPUs (``actors`` overrides the count)."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), max(int(total.get("CPU", 1)), 1)
    if gpus:
        n = actors or gpus
        return n, 1.0 if n <= gpus else gpus / n, max(cpus // n, 1)
    n = actors or max(cpus // CPUS_PER_ACTOR, 1)
    return n, 0.0, max(cpus // n, 1)


def run_paths_on_ray(paths: Iterable[str], load: LoadOptions, opts: BatchOptions, recursive: bool = True,
                     actors: int | None = None) -> tuple[Discovery, Iterator[ItemResult]]:
    """``batch.run_paths`` with the work in Ray actors: the same discovery, plan and skip-all here."""
    from ..common.atomic import remove_stale

    _import_ray()   # fail early, before listing, without the extra

    def engine(items: list[InputItem]) -> Iterator[ItemResult]:
        yield from _on_ray(items, load, opts, actors)
        # what actors that died mid-write left behind (their restarts redid those inputs)
        for folder in sorted({it.sheet.parent for it in items}):
            remove_stale(folder)

    return run_paths(paths, None, opts, recursive, engine)


def _on_ray(items: list[InputItem], load: LoadOptions, opts: BatchOptions, actors: int | None
            ) -> Iterator[ItemResult]:
    connect()
    import ray

    n, gpus, cpus = _resources(ray, actors)
    if load.device not in ("auto", "cpu", "cuda") and not load.device.startswith("cuda"):
        raise RayUnavailable(f"--device {load.device} cannot be used with --ray")
    if load.device == "cpu":
        gpus = 0.0
    elif load.device.startswith("cuda") and not gpus:
        raise RayUnavailable(f"--device {load.device}: the Ray cluster has no GPUs")
    model_batch = opts.batch_size or default_batch_size("cuda" if gpus else "cpu")
    # what one actor call gets: several model batches, so that inside the call decoding, the model and
    # writing overlap as in a local run; few enough that every actor gets work
    per_batch = max(1, min(CALL_BATCHES * model_batch, math.ceil(len(items) / (2 * n))))
    rows = [_item_row(i, it) for i, it in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_batch)))
    ds = ds.map_batches(_actor_class(load, opts, int(cpus)), batch_size=per_batch, concurrency=n,
                        num_gpus=gpus, num_cpus=cpus, batch_format="numpy")
    originals = {i: it for i, it in enumerate(items)}
    for row in ds.iter_rows():
        item = originals[int(row["i"])]
        r = json.loads(row["result"])
        # the driver's own spelling of the paths (relative where the user gave them), as a local run prints
        spelled = {os.path.abspath(p): str(p) for p in (item.sheet, *item.singles)}
        yield ItemResult(str(item.path), r["status"], [spelled.get(o, o) for o in r["outputs"]], r["weights"],
                         r["seconds"], r["error"], r.get("warnings", []))
