"""kvtierd from Python: find the daemon binary, run one, and the ``kvtierd`` command.

The wheel carries ``kvtierd`` (built with the extension) in ``kvtier/bin/``; ``kvtierd``
on the PATH after ``pip install`` runs it. For tests and notebooks, :class:`Daemon` starts
one with a config of keyword settings and stops it with SIGTERM (which writes host-only
chunks down to the NVMe tier before it exits)::

    from kvtier.daemon import Daemon
    with Daemon(socket="/tmp/kvtierd.sock", allow_anonymous=True, **{"host.capacity": "4GiB"}) as d:
        store = kvtier.Store.connect(d.address)

Settings are the config file's keys (``daemon/kvtierd.example.toml``), dotted for tables;
each becomes a ``--set key=value`` flag. A config file may be given as well (``config=``).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ._kvtier import Store, UnavailableError

__all__ = ["Daemon", "binary", "main"]


def binary():
    """The kvtierd executable: ``$KVTIERD``, else the one in this package, else the PATH's."""
    env = os.environ.get("KVTIERD")
    if env:
        return env
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "kvtierd")
    if os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("kvtierd")
    if found:
        return found
    raise FileNotFoundError("kvtierd: not in this kvtier package (kvtier/bin/kvtierd), not in $KVTIERD, not on "
                            "the PATH; build it with CMake (target kvtierd) or reinstall the package")


def _flag_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class Daemon:
    """A kvtierd process: started by :meth:`start` (or ``with``), stopped by :meth:`stop`.

    ``socket`` defaults to one in a fresh temporary directory; metrics are off unless
    ``metrics.listen`` is given. :meth:`start` returns once a client can connect (for a
    daemon with tenants, pass ``tenant`` and ``token`` to be checked with), and raises
    with the daemon's own error output if it exits first.
    """

    def __init__(self, config=None, socket=None, tenant="", token="", start_timeout=30.0, **settings):
        self._tmp = None
        if socket is None:
            self._tmp = tempfile.mkdtemp(prefix="kvtierd-")
            socket = os.path.join(self._tmp, "kvtierd.sock")
        self.socket = socket
        self.address = "unix:" + socket
        self.config = config
        self.tenant, self.token = tenant, token
        self.start_timeout = start_timeout
        self.settings = {"socket": socket, "metrics.listen": ""}
        self.settings.update({k.replace("__", "."): v for k, v in settings.items()})
        self.process = None
        self._log = None

    def command(self):
        cmd = [binary()]
        if self.config:
            cmd += ["--config", str(self.config)]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={_flag_value(value)}"]
        return cmd

    def start(self):
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"kvtierd on {self.socket} is already running (pid {self.process.pid})")
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"kvtierd exited with {self.process.returncode} at start:\n{self.log()}")
            try:
                Store.connect(self.address, tenant=self.tenant, token=self.token, timeout_ms=2000).close()
                return self
            except UnavailableError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"kvtierd did not answer on {self.socket} within {self.start_timeout} s:\n"
                                       f"{self.log()}")
                time.sleep(0.02)

    def stop(self, timeout=120.0):
        """SIGTERM (the daemon flushes write-backs to NVMe, then exits); returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TimeoutError(f"kvtierd did not exit within {timeout} s of SIGTERM:\n{self.log()}")
        return self.process.returncode

    def kill(self):
        """SIGKILL: no flush, as when the daemon crashes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self):
        """What the daemon has written to stdout and stderr (its key=value log lines)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)


def main():
    """The ``kvtierd`` command: runs the bundled daemon with this command's arguments."""
    try:
        exe = binary()
    except FileNotFoundError as e:
        sys.exit(str(e))
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    main()
