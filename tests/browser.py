"""A headless Chromium driven over the DevTools protocol with the standard library only: a page is
opened from disk, every console message, uncaught exception and browser log entry (a resource that
failed to load is one) is collected, and JavaScript is evaluated in it. Used by
tests/test_report_browser.py to check the report as a browser shows it.

Why not a Python browser library: this needs four DevTools calls (Runtime/Log/Page enable,
navigate, evaluate) and their events; a minimal WebSocket client (RFC 6455: the handshake, masked
text frames out, unmasked frames in) is ~60 lines and adds no dependency to the test extra, while
Playwright or Selenium would also download or pin their own browser. `--dump-dom` alone cannot see
console errors or whether an image decoded.

Chromium: $ATTNBENCH_CHROMIUM, else `chromium`, `chromium-browser`, `google-chrome` on PATH
(Debian: `apt-get install chromium`; .ci/run installs it). `unavailable()` says why it cannot run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    own = os.environ.get("ATTNBENCH_CHROMIUM")
    if own:
        return shutil.which(own) or (own if Path(own).is_file() else None)
    return next((p for p in map(shutil.which, NAMES) if p), None)


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


class WebSocket:
    """A client WebSocket (text frames) over a plain TCP socket."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BrowserError("DevTools closed the connection during the WebSocket handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise BrowserError(f"WebSocket handshake refused: {head[:200]!r}")

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                struct.pack("!BH", 0x80 | 126, n) if n < 2**16 else struct.pack("!BQ", 0x80 | 127, n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise BrowserError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        """The next text message (fragments joined; pings answered)."""
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            op = b0 & 0x0F
            if op == 0x8:
                raise BrowserError("DevTools closed the WebSocket")
            if op == 0x9:  # ping -> pong (masked, as a client must)
                m = os.urandom(4)
                self.sock.sendall(bytes([0x8A, 0x80 | len(data)]) + m + bytes(x ^ m[i % 4] for i, x in enumerate(data)))
                continue
            if op in (0x1, 0x0):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class Chromium:
    """`with Chromium() as page:` a headless Chromium with one page attached over DevTools."""

    def __init__(self, exe: str | None = None):
        self.exe = exe or find_chromium()
        if not self.exe:
            raise BrowserError("no Chromium found (" + ", ".join(NAMES) + " or $ATTNBENCH_CHROMIUM)")
        self.events: list[dict] = []
        self._id = 0

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.TemporaryDirectory(prefix="attnbench-chromium-")
        args = [self.exe, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
                "--remote-allow-origins=*", f"--user-data-dir={self.profile.name}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.log = open(Path(self.profile.name) / "chromium.log", "w+b")  # noqa: SIM115 - closed in __exit__
        # its own process group: __exit__ ends the renderer, GPU and crashpad children with it
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        try:
            self.ws = WebSocket(self._page_url())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        return self

    def _page_url(self) -> str:
        """The page target's DevTools URL: the port from DevToolsActivePort, then /json/list."""
        from urllib.request import urlopen

        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise BrowserError(f"{self.exe} exited with {self.proc.returncode}: "
                                   f"{self.log.read()[-600:].decode(errors='replace')}")
            lines = port_file.read_text().split() if port_file.is_file() else []
            if lines:
                try:
                    with urlopen(f"http://127.0.0.1:{lines[0]}/json/list", timeout=5) as r:
                        pages = [t for t in json.load(r) if t.get("type") == "page"]
                    if pages:
                        return pages[0]["webSocketDebuggerUrl"]
                except OSError:
                    pass
            time.sleep(0.05)
        raise BrowserError(f"{self.exe} did not open DevTools within {START_TIMEOUT_S:.0f} s")

    def __exit__(self, *exc) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Chromium's children may outlive it for a moment and still write into the profile folder;
        # removing it then failed once under load ("Directory not empty", an error in teardown)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()
        for attempt in range(20):
            try:
                self.profile.cleanup()
                break
            except OSError:
                if attempt == 19:
                    raise
                time.sleep(0.1)

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command, return its result; events meanwhile go to self.events."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def open(self, path: Path, timeout_s: float = 30.0) -> None:
        """Navigate to a file and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise BrowserError(f"{path} did not finish loading within {timeout_s:.0f} s")
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"evaluation failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def console_errors(self) -> list[str]:
        """Every console.error/assert, uncaught exception and error-level browser log entry so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                  for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out
