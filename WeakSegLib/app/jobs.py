"""Run jobs in a background worker process, and watch them.

A job (:mod:`WeakSegLib.app.job_types`: one typed class per kind) is written as a JSON file
(:func:`write_job`)::

    {"kind": "train", "out": "MODEL_DIR", "resume": true, "gpus": 1, "backend": "auto",
     "cases": [{"image": "img.nrrd", "boxes": "boxes.json", "mask": null, "eval_mask": null}],
     "config": {"recipe": "tightness+size+emptiness", "epochs": 50, ...}}       # TrainConfig fields
        # gpus > 1: that many processes under PyTorch's launcher (WeakSegLib.app.launch)
    {"kind": "predict", "model": "MODEL_DIR", "image": "img.nrrd", "out": "pred.nrrd",
     "prob_out": null, "device": "auto", "postprocess": true}    # PredictOptions fields besides
    {"kind": "predict-cases", "model": "MODEL_DIR", "out_dir": "PREDICTIONS/", "suffix": ".seg.nrrd",
     "cases": [{"name": "case01", "image": "case01.nrrd", "mask": "case01_mask.nrrd"}], "device": "auto"}
        # one prediction per case (a failing case is reported and skipped); with masks, the scores of
        # `weakseg evaluate` in OUT_DIR/scores.json
    {"kind": "rank", "model": "MODEL_DIR", "dataset": "dataset.json", "device": "auto"}
    {"kind": "tighten-train", "out": "TIGHTENER_DIR", "resume": true,
     "cases": [{"image": "img.nrrd", "mask": "labels.nrrd"}], "config": {...}}     # TightenerConfig fields
    {"kind": "tighten", "model": "TIGHTENER_DIR", "image": "img.nrrd", "boxes": "boxes3d.json",
     "out": "boxes2d.json", "settings": {...}, "device": "auto"}                   # TightenSettings fields

A field left out takes its default; a job's shape (kind, fields, their JSON types) is checked when it
is written and read, its settings and cases when the worker builds the typed job.

``python -m WeakSegLib.app.worker JOB.json`` runs it, prints one JSON event per line on stdout
(:mod:`WeakSegLib.events`), logs to stderr, and exits with one of the codes below. SIGTERM
cancels at the next batch: the last epoch's checkpoint stays, and the same job started again resumes
from it (so does a job whose worker was killed).

In Python (e.g. a Slicer module): ``handle = start_job(job, workdir)``, then ``handle.finished()``,
``handle.events()``, ``handle.request_cancel()`` (or the blocking ``handle.cancel()``), ``handle.wait()``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, Sequence

from WeakSegLib import events
from WeakSegLib.app.job_types import Job, check_job
from WeakSegLib.io.atomic import atomic_write_json

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # unexpected failure; the traceback is in the log
EXIT_BAD_INPUT = 2       # bad image, boxes, mask or model: the "error" event says which
EXIT_CANCELLED = 3       # SIGTERM / cancel(): stopped at a batch boundary, checkpoint kept
EXIT_BAD_JOB = 4         # the job file is missing, unreadable or incomplete
EXIT_CODES = {EXIT_OK: "finished", EXIT_INTERNAL_ERROR: "internal error", EXIT_BAD_INPUT: "bad input",
              EXIT_CANCELLED: "cancelled", EXIT_BAD_JOB: "bad job file"}
def write_job(job: Job | dict, path: str | os.PathLike) -> Path:
    """Write ``job`` (a typed job, or its JSON object with the shape checked: :func:`check_job`) atomically."""
    return atomic_write_json(path, job.to_dict() if isinstance(job, Job) else check_job(job))


class GpuProbe:
    """The CUDA GPUs of this machine as ``nvidia-smi -L`` lists them (0 without the NVIDIA driver), asked
    without importing torch and without waiting: the command starts at construction and :meth:`result`
    reads its answer once it has come (None before; a GUI asks again from a timer)."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._count: int | None = None
        self._deadline = time.monotonic() + timeout
        try:
            self._process: subprocess.Popen | None = subprocess.Popen(
                ["nvidia-smi", "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._process, self._count = None, 0

    def result(self) -> int | None:
        """GPUs listed, or None while ``nvidia-smi`` still runs (it is killed after the timeout: 0)."""
        if self._count is None and self._process is not None:
            code = self._process.poll()
            if code is None and time.monotonic() < self._deadline:
                return None
            if code is None:
                self._process.kill()
            listing = self._process.communicate()[0] if code == 0 else ""
            self._count = sum(line.startswith("GPU ") for line in listing.splitlines())
        return self._count


def child_of_launcher() -> bool:
    """Whether this process was started by a distributed launcher (``torchrun`` or ``--gpus N``)."""
    return "LOCAL_RANK" in os.environ


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``. A process of a distributed launcher ends without Python's interpreter
    finalisation: gloo's worker threads may still hold tensors the finaliser cannot free, which aborts the
    process ("terminate called without an active exception") after its work is done. All its files are on
    disk already (every write is fsynced before its rename); its output streams are flushed here."""
    if child_of_launcher():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def package_root() -> str:
    """Folder that holds the ``WeakSegLib`` package (put on the worker's PYTHONPATH)."""
    return str(Path(__file__).resolve().parent.parent)


#: seconds a cancelled job's processes get to stop at their next batch before they are killed
CANCEL_GRACE_SECONDS = 30.0


class JobHandle:
    """A running worker and every process it started: its events, state and cancellation.

    The worker may run under a launcher, as inside Slicer: ``PythonSlicer`` is CTK's application launcher,
    which starts the real interpreter as its child, forwards its output and forwards no signal
    (commontk/AppLauncher, ``Base/ctkAppLauncher.cpp``, ``runProcess``). So the job is the worker's whole
    process group (its own session, POSIX) or process tree (Windows), and it has ended only when the
    started process has exited *and* every process of the job has closed its output — never while an
    orphaned worker still trains. Nothing here blocks unless asked to (:meth:`wait`, :meth:`cancel` with a
    timeout): a GUI polls :meth:`finished` from a timer.
    """

    def __init__(self, process: subprocess.Popen, job_path: Path, log_path: Path) -> None:
        self.process = process
        self.job_path = job_path
        self.log_path = log_path
        self._queue: "queue.Queue[dict]" = queue.Queue()
        self.history: list[dict] = []
        self.cancel_requested: float | None = None  # monotonic time of the request
        self._killed = False
        self._said_cancelled = False  # the worker's "cancelled" event went by (set by the reader)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": events.OUTPUT, "text": line}
            self._said_cancelled |= isinstance(event, dict) and event.get("event") == events.CANCELLED
            self._queue.put(event)

    def poll(self) -> int | None:
        """Exit code of the started process (the launcher, if any), or None while it runs."""
        return self.process.poll()

    def finished(self) -> bool:
        """Whether the job has ended: the started process exited and no process of the job holds its
        output any more (so every event is queued). A cancelled job still running
        :data:`CANCEL_GRACE_SECONDS` after the request is killed here. Never blocks."""
        done = self.process.poll() is not None and not self._reader.is_alive()
        if (not done and self.cancel_requested is not None and not self._killed
                and time.monotonic() - self.cancel_requested > CANCEL_GRACE_SECONDS):
            self.kill()
        return done

    @property
    def exit_code(self) -> int | None:
        """The job's exit code (:data:`EXIT_CODES`), or None before :meth:`finished`: a job that said it was
        cancelled, or was stopped on request, is :data:`EXIT_CANCELLED` even when its launcher died of the
        signal."""
        if not self.finished():
            return None
        code = self.process.returncode
        if code == EXIT_OK:
            return code
        if self._said_cancelled or code == EXIT_CANCELLED or (self.cancel_requested is not None and code < 0):
            return EXIT_CANCELLED
        return code

    def events(self) -> list[dict]:
        """Events that arrived since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.history.extend(out)
        return out

    def all_events(self) -> list[dict]:
        """Every event since the start, including those not yet fetched by :meth:`events`."""
        self.events()
        return list(self.history)

    def _signal(self, force: bool) -> None:
        """SIGTERM (SIGKILL when ``force``) to every process of the job; on Windows the tree is ended by
        ``taskkill`` (which has no graceful form for console programs)."""
        if self.process.poll() is not None and not self._reader.is_alive():
            return  # all gone: the group id may belong to someone else by now
        if hasattr(os, "killpg"):
            try:
                os.killpg(self.process.pid, signal.SIGKILL if force else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            subprocess.run(["taskkill", "/PID", str(self.process.pid), "/T", "/F"], capture_output=True, check=False)

    def request_cancel(self) -> None:
        """Ask every process of the job to stop (SIGTERM: the worker stops at the next batch, keeping its
        checkpoint); returns at once. The job is killed if still running after the grace period."""
        if self.cancel_requested is None and not self.finished():
            self.cancel_requested = time.monotonic()
            self._signal(force=False)

    def kill(self) -> None:
        """Kill every process of the job now (SIGKILL)."""
        self._killed = True
        self._signal(force=True)

    def cancel(self, timeout: float = CANCEL_GRACE_SECONDS) -> int:
        """:meth:`request_cancel`, then wait up to ``timeout`` seconds for the job to end, kill what is left;
        returns the exit code (:data:`EXIT_CANCELLED` when it stopped on the request)."""
        self.request_cancel()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait(CANCEL_GRACE_SECONDS)

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> int:
        """Block until the job has ended (:meth:`finished`); returns :attr:`exit_code`. Raises
        :class:`subprocess.TimeoutExpired` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished():
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            time.sleep(interval)
        return self.exit_code  # type: ignore[return-value]

    def log(self) -> str:
        """The worker's log (its stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    @property
    def status(self) -> str:
        code = self.exit_code
        return "running" if code is None else EXIT_CODES.get(code, f"exit code {code}")


def start_job(job: Job | dict, workdir: str | os.PathLike, python: str | Sequence[str] | None = None) -> JobHandle:
    """Write ``job`` to ``workdir/job.json`` and start a worker on it.

    Args:
        job: a typed job, or its JSON object (the module docstring).
        workdir: folder for the job file and the worker's log (``worker.log``).
        python: interpreter command (default: this one; inside Slicer pass ``PythonSlicer``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = write_job(job, workdir / "job.json")
    log_path = workdir / "worker.log"
    cmd = [python] if isinstance(python, str) else list(python or [sys.executable])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {job_path}\n".encode())
        process = subprocess.Popen([*cmd, "-m", "WeakSegLib.app.worker", str(job_path)], stdout=subprocess.PIPE,
                                   stderr=log, env=env, text=True, bufsize=1,
                                   start_new_session=hasattr(os, "setsid"))
    return JobHandle(process, job_path, log_path)
