#!/usr/bin/env python3
"""serve_client.py - a load generator for `dexec serve` (tests and bench):
CLIENTS threads, each with its own keep-alive connection, send REQUESTS
generation requests in all and report throughput, latency percentiles and
the statuses seen as one JSON line.

    serve_client.py URL CLIENTS REQUESTS [STEPS] [N]
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def main():
    url = urllib.parse.urlparse(sys.argv[1])
    clients, total = int(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    body = json.dumps({"prompt": "sneaker", "n": n, "num_inference_steps": steps, "seed": 1})
    lock = threading.Lock()
    left = [total]
    lat, statuses, images = [], {}, [0]

    def worker():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            t = time.monotonic()
            try:
                conn.request("POST", "/v1/images/generations", body,
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                code = r.status
                got = len(json.loads(data)["data"]) if code == 200 else 0
            except (OSError, http.client.HTTPException) as e:
                code, got = "error: " + type(e).__name__, 0
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
            with lock:
                lat.append(time.monotonic() - t)
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                images[0] += got
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
    print(json.dumps({"clients": clients, "requests": total, "statuses": statuses,
                      "images": images[0], "wall_s": round(wall, 3),
                      "images_per_s": round(images[0] / wall, 2),
                      "p50_ms": round(pct(0.50) * 1000, 2), "p99_ms": round(pct(0.99) * 1000, 2)}))


if __name__ == "__main__":
    main()
