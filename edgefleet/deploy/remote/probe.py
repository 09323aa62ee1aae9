"""The health gate's probe on the device: `python3 -c <source>`, one JSON line on stdin.

It talks to the service on loopback, so the latency it reports is the device's, not the SSH
link's. The request (port, token, route, payloads, rounds, timeout) comes on stdin, so the
token never shows on a command line. It reads /v1/info before, between and after its rounds
(RSS and every throttle state the thermal guard was in), and prints one JSON document: round
0's answers in "outputs". It never raises: errors are part of the answer.
"""

from __future__ import annotations

import http.client
import json
import sys
import time


def call(req: dict, method: str, path: str, body=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", req["port"], timeout=req.get("timeout", 60))
    headers = {"Content-Type": "application/json"}
    if req.get("token"):
        headers["Authorization"] = "Bearer " + req["token"]
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw or b"{}")
    finally:
        conn.close()


def info(req: dict, out: dict) -> None:
    try:
        status, body = call(req, "GET", "/v1/info")
        th = body.get("throttle") or {}
        temps = [z.get("temp_c") for z in (body.get("temperatures") or {}).values() if isinstance(z, dict)]
        out["info"].append({"status": status, "throttle": th.get("state"), "rss_bytes": body.get("rss_bytes"),
                            "temps": [t for t in temps if isinstance(t, (int, float))]})
    except Exception as exc:
        out["errors"].append(f"/v1/info: {exc}")


def probe(req: dict) -> dict:
    """Return the probe's answer for `req`."""
    out: dict = {"latency_ms": [], "outputs": [], "info": [], "errors": []}
    info(req, out)
    for r in range(req["rounds"]):
        for payload in req["payloads"]:
            t0 = time.perf_counter()
            try:
                status, body = call(req, "POST", req["route"], payload)
            except Exception as exc:
                out["errors"].append("{}: {}".format(req["route"], exc))
                continue
            took = (time.perf_counter() - t0) * 1000.0
            if status != 200:
                out["errors"].append("{} answered {}: {}".format(req["route"], status, str(body)[:200]))
                continue
            out["latency_ms"].append(took)
            if r == 0:
                out["outputs"].append(body)
        info(req, out)
    return out


def main() -> None:
    print(json.dumps(probe(json.loads(sys.stdin.readline()))))


if __name__ == "__main__":
    main()
