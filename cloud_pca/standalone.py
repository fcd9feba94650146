"""A real Spark standalone cluster on 127.0.0.1, started from the pyspark wheel: one master and N workers,
each its own JVM (``bin/spark-class ...deploy.master.Master`` / ``...deploy.worker.Worker``).

It is how the project tests and benchmarks the EMR steps the way a cluster runs them (driver, master,
workers and executors in separate JVMs, Spark's defaults), and how a user can run the demo on a cluster::

    python -m cloud_pca.standalone start --workers 2 --cores 1    # prints spark://127.0.0.1:PORT
    ./run demo --master spark://127.0.0.1:PORT
    python -m cloud_pca.standalone stop

Every process binds to 127.0.0.1 (``SPARK_LOCAL_IP`` and ``--host``); ports are free ones picked at start.
Stopping kills each JVM's whole process group, so executors and their Python workers go too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contract.errors import FruitsError

LOOPBACK = "127.0.0.1"


class ClusterError(FruitsError, RuntimeError):
    """The local cluster could not be started or found; the message says why and where the logs are."""


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark wheel."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def loopback_env(base: dict | None = None) -> dict:
    """The environment for any Spark JVM the project starts: bound to loopback, this Python for workers."""
    env = dict(os.environ if base is None else base)
    env.update({"SPARK_LOCAL_IP": LOOPBACK, "SPARK_LOCAL_HOSTNAME": "localhost", "SPARK_HOME": str(spark_home()),
                "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable)})
    return env


@dataclass
class LocalCluster:
    """``with LocalCluster(workers=2, cores=1) as c: c.master_url``.

    ``memory``: what each worker offers its executors (an executor takes Spark's default 1 GiB unless the
    application asks for more).
    """

    workers: int = 2
    cores: int = 1
    memory: str = "4g"
    workdir: Path | None = None
    tie_to_parent: bool = True   # the JVMs get SIGTERM if this process dies (not for `start`, which exits)
    master_url: str = ""
    web_url: str = ""
    pids: list[int] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def start(self, timeout: float = 90.0) -> "LocalCluster":
        if self.workers < 1 or self.cores < 1:
            raise ClusterError(f"workers={self.workers} and cores={self.cores} must be at least 1")
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ClusterError("Java is needed for Spark (install OpenJDK 17)")
        self._temp_workdir = self.workdir is None   # removed by stop(): executors copy the jars there (GBs)
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="fruits-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        port, web = free_port(), free_port()
        self.master_url, self.web_url = f"spark://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{web}"
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK, "--port", str(port),
                               "--webui-port", str(web)])
        for i in range(self.workers):
            work = self.workdir / f"worker-{i}"
            work.mkdir(exist_ok=True)
            self._spawn(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", self.master_url, "--host", LOOPBACK,
                                        "--port", str(free_port()), "--webui-port", str(free_port()),
                                        "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(work)])
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=loopback_env(),
                                    cwd=self.workdir, start_new_session=True,   # its own group: killed as one
                                    preexec_fn=_die_with_parent if self.tie_to_parent else None)
        self.pids.append(proc.pid)
        self.logs.append(str(log))

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(self.web_url + "/json/", timeout=2) as r:
                state = json.load(r)
        except (OSError, ValueError):
            return -1
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, log in zip(self.pids, self.logs):
                if not _running(pid):
                    raise ClusterError(f"a Spark process exited while starting; see {log}")
            if self.alive_workers() >= self.workers:
                return
            time.sleep(0.3)
        raise ClusterError(f"{self.workers} worker(s) did not register with {self.master_url} within "
                           f"{timeout:.0f} s; see the logs in {self.workdir}")

    def stop(self) -> None:
        for pid in reversed(self.pids):   # workers first (they stop their executors), then the master
            _kill_group(pid)
        self.pids = []
        if getattr(self, "_temp_workdir", False) and self.tie_to_parent:   # `cluster start` keeps its logs
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG), so a killed test
    run or benchmark never leaves a cluster behind. It survives the exec into the JVM."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the context manager's stop() still applies
        pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _kill_group(pid: int, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def run_group(cmd: list[str], *, timeout: float, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a process group of its own, killed as a whole
    (spark-submit's JVM and the Python driver it starts) on a timeout or when the caller is interrupted (a test's
    timeout): no driver is left behind, holding ports and executors."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_die_with_parent, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc.pid, grace=5.0)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ------------------------------------------------------------------------------------ the command line
def state_file() -> Path:
    return Path(os.environ.get("FRUITS_CACHE", Path.cwd() / ".cache")) / "cluster.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud_pca.standalone", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", metavar="ACTION")
    s = sub.add_parser("start", help="start a master and workers on 127.0.0.1; prints the master URL")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--cores", type=int, default=1, help="cores per worker")
    s.add_argument("--memory", default="4g", help="memory each worker offers its executors")
    sub.add_parser("stop", help="stop the cluster started by 'start'")
    sub.add_parser("status", help="the master URL and live workers")
    args = ap.parse_args(argv)
    path = state_file()
    previous = json.loads(path.read_text()) if path.is_file() else None
    alive = previous is not None and any(_running(p) for p in previous["pids"])
    if args.action == "start":
        if alive:
            print(f"Error: a cluster is already running at {previous['master_url']} (stop it first)", file=sys.stderr)
            return 1
        try:
            cluster = LocalCluster(workers=args.workers, cores=args.cores, memory=args.memory,
                                   tie_to_parent=False).start()
        except ClusterError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        path.parent.mkdir(parents=True, exist_ok=True)
        info = asdict(cluster)
        info["workdir"] = str(cluster.workdir)
        info.pop("tie_to_parent")
        path.write_text(json.dumps(info, indent=1))
        print(cluster.master_url)
        print(f"web UI {cluster.web_url}; logs in {cluster.workdir}; stop with: python -m cloud_pca.standalone stop",
              file=sys.stderr)
        return 0
    if args.action == "stop":
        if previous is None:
            print("no cluster started from here", file=sys.stderr)
            return 0
        for pid in reversed(previous["pids"]):
            _kill_group(pid)
        path.unlink()
        print(f"stopped {previous['master_url']}")
        return 0
    if args.action == "status":
        if not alive:
            print("no cluster running", file=sys.stderr)
            return 1
        c = LocalCluster(master_url=previous["master_url"], web_url=previous["web_url"])
        print(f"{previous['master_url']}: {c.alive_workers()} live worker(s)")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
