#!/usr/bin/env python3
"""serve_browser.py - drives a headless Chromium through the DevTools
protocol (a minimal WebSocket client, standard library only): opens URL,
waits until document.title is DONE_TITLE (or the deadline), then prints
the page's DOM and writes a screenshot.

    serve_browser.py BROWSER URL DONE_TITLE SCREENSHOT.png TIMEOUT_S
"""
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


class Ws:
    def __init__(self, url):
        host, rest = url[len("ws://"):].split("/", 1)
        h, p = host.split(":")
        self.s = socket.create_connection((h, int(p)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n" % (rest, host, key)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.s.recv(4096)
        assert buf.startswith(b"HTTP/1.1 101"), buf[:80]
        self.buf = buf.split(b"\r\n\r\n", 1)[1]
        self.id = 0

    def _read(self, n):
        while len(self.buf) < n:
            d = self.s.recv(1 << 16)
            if not d:
                raise EOFError
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, method, **params):
        self.id += 1
        data = json.dumps({"id": self.id, "method": method, "params": params}).encode()
        hdr = bytes([0x81])
        n = len(data)
        hdr += bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n)
                                                   if n < 65536 else
                                                   bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:  # replies and events; keep the reply to this call
            b0, b1 = self._read(2)
            n = b1 & 0x7f
            if n == 126:
                n, = struct.unpack(">H", self._read(2))
            elif n == 127:
                n, = struct.unpack(">Q", self._read(8))
            msg = self._read(n)
            if b0 & 0x0f != 1:
                continue
            m = json.loads(msg)
            if m.get("id") == self.id:
                if "error" in m:
                    raise RuntimeError(m["error"])
                return m["result"]


def main():
    browser, url, done, shot, timeout = sys.argv[1:6]
    prof = tempfile.mkdtemp(prefix="dexec-browser.")
    p = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--user-data-dir=" + prof, "--remote-debugging-port=0",
                          "--window-size=1000,600", "about:blank"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(prof, "DevToolsActivePort")
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.1)
        port = open(port_file).read().split()[0]
        pages = json.load(urllib.request.urlopen("http://127.0.0.1:%s/json/list" % port))
        ws = Ws([t for t in pages if t["type"] == "page"][0]["webSocketDebuggerUrl"])
        ws.send("Page.enable")
        ws.send("Page.navigate", url=url)
        deadline = time.monotonic() + float(timeout)
        title = ""
        while time.monotonic() < deadline:
            title = ws.send("Runtime.evaluate", expression="document.title")["result"]["value"]
            if title == done:
                break
            time.sleep(0.2)
        dom = ws.send("Runtime.evaluate",
                      expression="document.documentElement.outerHTML")["result"]["value"]
        png = ws.send("Page.captureScreenshot", format="png")["data"]
        open(shot, "wb").write(base64.b64decode(png))
        print(dom)
        print("title: " + title)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", prof])


if __name__ == "__main__":
    main()
