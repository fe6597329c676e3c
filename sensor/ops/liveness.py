"""systemd's notification protocol: READY=1, WATCHDOG=1 while the pipeline advances, STOPPING=1.

sd_notify(3) is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET (a name starting with '@' is in the
abstract namespace), so it is written here in a few lines rather than taken from a package: the `sdnotify`
package does the same and adds nothing we need, and libsystemd's bindings would need a C build.

With `WatchdogSec=` in the unit, systemd sets $WATCHDOG_USEC (and $WATCHDOG_PID) and restarts the service when no
WATCHDOG=1 came for that long. The pings come from a thread of their own that first asks the same question as
/livez (`Heartbeat.check`): a pipeline stuck inside a batch stops them, and systemd restarts a sensor that would
otherwise sit blind with a running HTTP thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger("container_sensor")


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Sends `message` to systemd; False when not run by systemd (no $NOTIFY_SOCKET) or the socket refuses."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a transport (vsock) the sensor has no use for
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.debug("sd_notify %s to %s failed: %s", message, address, error)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or None when systemd
    watches no process or another one ($WATCHDOG_PID)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2_000_000


class SystemdNotifier:
    """READY=1 once the probes are attached, WATCHDOG=1 while `live()` says so, STOPPING=1 at shutdown.

    Does nothing when systemd did not start the sensor with Type=notify."""

    def __init__(self, live: Callable[[], tuple[bool, str]], env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._live = live
        self.enabled = bool(self._env.get("NOTIFY_SOCKET"))
        self.interval = watchdog_interval(self._env) if self.enabled else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.withheld = 0

    def ready(self) -> None:
        if not self.enabled:
            return
        notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=probes attached, events flowing", self._env)
        if self.interval is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
            self._thread.start()

    def stopping(self) -> None:
        if not self.enabled:
            return
        notify("STOPPING=1\nSTATUS=draining the pipeline", self._env)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        assert self.interval is not None
        stalled = False
        while not self._stop.wait(self.interval):
            try:
                alive, reason = self._live()
            except Exception as error:  # a failing check must stop the pings, not the thread
                alive, reason = False, f"liveness check failed: {type(error).__name__}: {error}"
            if alive:
                if stalled:
                    log.warning("pipeline advancing again: systemd watchdog pings resumed")
                    stalled = False
                notify("WATCHDOG=1", self._env)
                self.pings += 1
                continue
            self.withheld += 1
            if not stalled:
                stalled = True
                log.error("%s: systemd watchdog pings withheld, systemd restarts the sensor", reason)
                notify(f"STATUS={reason}", self._env)
