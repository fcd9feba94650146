"""A run that stops making progress fails with a message, instead of holding a cluster until someone notices.

Progress is a Spark task finishing (any job of the application, read from its status tracker) or the job
moving to its next stage (:meth:`Watchdog.stage`, which the job's progress lines call). When neither happens for
``stall_s`` seconds, the watchdog:

1. logs what every Python thread of the driver was doing (a hang is diagnosed from that, not guessed);
2. cancels the application's Spark jobs, so an action waiting on a stuck task returns with an error;
3. if the run's thread is still in the same stage a few seconds later (stuck in Python: a lock, a socket),
   interrupts it with ``SIGUSR1``, whose handler raises :class:`Stalled`.

Either way the run ends with one ``Error:`` line naming the stage and how long it made no progress. The stall
limit is generous by default (20 minutes: a task reads at most 128 MB of vectors or photos); the EMR steps
take it as ``--stall-minutes``.

>>> with Watchdog(stall_s=1200) as dog:   # doctest: +SKIP
...     dog.stage("reading")
...     ...
"""
from __future__ import annotations

import faulthandler
import importlib
import logging
import signal
import sys
import threading
import time

from contract.errors import FruitsError

log = logging.getLogger(__name__)
DEFAULT_STALL_S = 20 * 60
_current: "Watchdog | None" = None


class Stalled(FruitsError, RuntimeError):
    """The run made no progress for longer than its stall limit; says in which stage."""


def current() -> "Watchdog | None":
    """The watchdog of the run in progress in this process, if any."""
    return _current


def beat(stage: str | None = None) -> None:
    """Progress from the run's own code (a stage line): the current watchdog, if any, is told."""
    if _current is not None:
        _current.stage(stage) if stage else _current.beat()


class Watchdog:
    """``with Watchdog(stall_s=...)``: watch the block for progress (see the module). Nested watchdogs defer to the
    outer one. ``stall_s`` of 0 or less turns it off."""

    def __init__(self, *, stall_s: float = DEFAULT_STALL_S, poll_s: float | None = None, grace_s: float | None = None):
        self.stall_s = float(stall_s)
        self.poll_s = poll_s if poll_s is not None else max(0.2, min(5.0, self.stall_s / 10))
        self.grace_s = grace_s if grace_s is not None else max(1.0, min(15.0, self.stall_s / 4))
        self.where = "starting"
        self.stalled: str | None = None
        self._last = time.monotonic()
        self._progress = None
        self._stop = threading.Event()
        self._thread = None
        self._outer = None
        self._old_handler = None
        self._armed = False              # a SIGUSR1 handler of ours is installed on the run's (main) thread
        self._target = None

    # ------------------------------------------------------------------------------------------- API
    def stage(self, name: str) -> None:
        self.where = name
        self.beat()

    def beat(self) -> None:
        self._last = time.monotonic()

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Watchdog":
        global _current
        if _current is not None or self.stall_s <= 0:
            self._outer = _current or self
            return self._outer
        _current = self
        self._target = threading.current_thread()
        if self._target is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGUSR1, self._interrupted)
            self._armed = True
        # What the watching thread uses is imported here, on this thread (imports in threads can deadlock).
        for name in ("pyspark", "pyspark.status"):
            importlib.import_module(name)

        self._thread = threading.Thread(target=self._watch, name="fruits-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        global _current
        if self._outer is not None:
            return False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 5)
        _current = None
        if self._armed:
            signal.signal(signal.SIGUSR1, self._old_handler if self._old_handler is not None else signal.SIG_DFL)
        if exc is not None and self.stalled and not isinstance(exc, Stalled):
            raise Stalled(self.stalled) from None   # a cancelled Spark job's error, said as what happened
        return False

    # ------------------------------------------------------------------------------------- watching
    def _interrupted(self, signum, frame):
        raise Stalled(self.stalled or f"interrupted in stage '{self.where}'")

    def _spark_progress(self):
        """Tasks finished in the active stages and jobs started so far, or None when no Spark runs here."""
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:
            return None
        try:
            tracker = sc.statusTracker()
            done = 0
            for sid in tracker.getActiveStageIds():
                info = tracker.getStageInfo(sid)
                if info is not None:
                    done += info.numCompletedTasks + info.numFailedTasks
            return done, tuple(tracker.getActiveStageIds())
        except Exception:  # the JVM is stopping or gone: nothing to learn from it
            return None

    def _in_jvm_call(self) -> bool:
        """Whether the run's thread is inside a py4j call: interrupting one would leave the JVM gateway's connection
        half-read and break the session."""
        frame = sys._current_frames().get(self._target.ident)
        while frame is not None:
            if "/py4j/" in frame.f_code.co_filename.replace("\\", "/"):
                return True
            frame = frame.f_back
        return False

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            progress = self._spark_progress()
            if progress is not None and progress != self._progress:
                self._progress = progress
                self.beat()
            idle = time.monotonic() - self._last
            if idle >= self.stall_s:
                self._fire(idle, progress)
                return

    def _fire(self, idle: float, progress) -> None:
        where = self.where
        running = f"{len(progress[1])} Spark stage(s) running" if progress and progress[1] else "no Spark job running"
        self.stalled = (f"no progress for {idle:.0f} s in stage '{where}' ({running}); the run was stopped. The "
                        f"driver's threads were logged; a stuck task or lock is the usual cause (limit: "
                        f"--stall-minutes)")
        log.error("%s", self.stalled)
        print(f"[watchdog] {self.stalled}\n[watchdog] the driver's Python threads:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is not None:
            try:
                sc.cancelAllJobs()
            except Exception:  # the JVM is gone: nothing to cancel
                pass
        # A Spark action returns with the cancellation once its tasks are killed; only a run stuck in Python (no
        # Spark job running) is interrupted, never a py4j call in flight.
        deadline = time.monotonic() + max(self.grace_s, 60.0)
        while not self._stop.wait(self.grace_s):
            progress = self._spark_progress()
            if self.where != where:
                return                      # it moved on after all
            if not (progress and progress[1]):
                if self._armed and not self._in_jvm_call():
                    signal.pthread_kill(self._target.ident, signal.SIGUSR1)   # raises Stalled in the run's thread
                elif self._armed:
                    log.error("the run is waiting on a call into the JVM: it cannot be interrupted safely")
                return
            if time.monotonic() > deadline:
                log.error("the cancelled Spark jobs did not end within %.0f s", max(self.grace_s, 60.0))
                return
