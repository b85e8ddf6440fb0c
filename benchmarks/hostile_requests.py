"""Hostile requests against a real `bentoml serve`: every bad input must get a 4xx that says why.

    python benchmarks/hostile_requests.py            # ~1-2 minutes; writes benchmarks/results/hostile_requests.md

Starts two servers on 127.0.0.1 (1 worker each, a 2 s body timeout so that slow bodies are
quick to test): one with a small model of data/cardio.csv (21 numeric columns), one with a small
image model of data/fashion_mnist_sample.npz. Sends each kind of hostile request `--repeat` times
(bad JSON, wrong types, huge and non-finite numbers, pickle and duplicate content types,
oversized bodies from plain and 100-continue clients, slow bodies, long and odd file names,
corrupt and oversized images, ...), and writes a table of what came back (status, reason, count)
with totals. The bar: no 5xx, no server error in the logs, both servers still ready and exact.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import socket
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import Serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hostile_requests.md"
BODY_TIMEOUT_S = 2
Answer = tuple[int, str]  # status, reason


def serve(model: Path, home: Path) -> Serve:
    """`bentoml serve` of one model directory (service_load's ``Serve``), with the short body timeout."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", ANOMALY_VAE_MODEL=str(model),
               ANOMALY_VAE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))
    return Serve("service.app:AnomalyVAE", ROOT, env, log=home / f"serve-{model.name}.log")


# -- ways of sending ---------------------------------------------------------------------------
def reason_of(status: int, body: bytes) -> str:
    """The ``reason`` of an error answer; for a 2xx, how many samples were flagged."""
    if status < 300 and body.startswith(b'"row"'):  # a CSV answer
        rows = pd.read_csv(io.BytesIO(body))
        return f"flagged {int(rows['is_anomaly'].sum())} of {len(rows)}"
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("latin-1").strip()[:40] or "-"
    if not isinstance(doc, dict):
        return "-"
    if status < 300:
        flags = doc.get("is_anomaly") or [x["is_anomaly"] for x in doc.get("results", [])]
        return f"flagged {sum(flags)} of {len(flags)}"
    if "reason" in doc:
        return doc["reason"]
    if doc.get("detail"):  # BentoML's own 400: pydantic's first problem
        return f"pydantic: {doc['detail'][0].get('type')}"
    return "-" if status < 400 else str(doc.get("error", "-"))[:40]


def post(url: str, **kwargs) -> Answer:
    r = httpx.post(url, timeout=60, **kwargs)
    return r.status_code, reason_of(r.status_code, r.content)


def raw(url: str, data: bytes, wait: float = 10.0) -> Answer:
    """Bytes written to a socket as they are; the answer read until the server closes the
    connection, the answer is complete, or ``wait`` seconds pass (status 0: no answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    if not answer.startswith(b"HTTP/1.1 "):
        return 0, "no answer"
    return int(answer[9:12]), reason_of(int(answer[9:12]), answer.partition(b"\r\n\r\n")[2])


def urllib_post(url: str, data: bytes, content_type: str = "application/json") -> Answer:
    """Python's urllib: the whole body first, then the answer (no Expect: 100-continue)."""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, reason_of(r.status, r.read())
    except urllib.error.HTTPError as err:
        return err.code, reason_of(err.code, err.read())
    except OSError as err:  # a reset connection: the client never saw an answer
        return 0, type(err).__name__


def png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A grey PNG of side x side zero pixels (400 megapixels), a few hundred KB compressed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def multipart(field: str, name: str, content: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request_bytes(path: str, headers: dict[str, str] | list[tuple[str, str]], body: bytes = b"") -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    head = "".join(f"{k}: {v}\r\n" for k, v in items)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body


# -- the cases ---------------------------------------------------------------------------------
def cases(table: str, image: str, row: list[float], image_rows: np.ndarray) -> list[tuple[str, str, Callable[[], Answer]]]:
    """(what, route, send) for every kind of hostile request; ``row`` is one good table row."""
    score, csv_route, images_route = f"{table}/score", f"{table}/score_csv", f"{image}/score_images"
    J = {"content-type": "application/json"}

    def score_json(instances) -> Callable[[], Answer]:
        return lambda: post(score, json={"instances": instances})

    def score_text(text: str, url: str = score) -> Callable[[], Answer]:
        return lambda: post(url, content=text.encode(), headers=J)

    def with_value(v) -> list:
        return [[v] + row[1:]]

    def with_text(token: str) -> str:
        return '{"instances": [[' + token + "".join(f", {v!r}" for v in row[1:]) + "]]}"

    def image_with(v) -> Callable[[], Answer]:
        img = image_rows[0].tolist()
        img[3][5] = v
        return lambda: post(f"{image}/score", json={"instances": [img]})

    good_csv = pd.DataFrame([row], columns=[f"f{i:02d}" for i in range(21)]).to_csv(index=False).encode()
    csv_with = lambda text: good_csv.replace(str(row[0]).encode(), text.encode(), 1)  # noqa: E731
    shirt = png(image_rows[0])
    bomb = png_bomb()
    odd_name = multipart("files", "a\x00\nb.png", shirt)
    deep = "[" * 100_000 + "]" * 100_000
    return [
        ("not JSON", "/score", score_text("{instances")),
        ("empty body", "/score", score_text("")),
        ("JSON array at the top", "/score", score_text("[1, 2, 3]")),
        ("no 'instances' field", "/score", lambda: post(score, json={"rows": [row]})),
        ("'instances' a number", "/score", score_json(5)),
        ("'instances' empty", "/score", score_json([])),
        ("instance a string", "/score", score_json(["row"])),
        ("row of 2 values", "/score", score_json([[1.0, 2.0]])),
        ("row of 22 values", "/score", score_json([row + [0.0]])),
        ("object missing a column", "/score", score_json([{f"f{i:02d}": 0.0 for i in range(20)}])),
        ("object with an unknown column", "/score", score_json([{**{f"f{i:02d}": 0.0 for i in range(21)}, "x": 1}])),
        ("string in a numeric column", "/score", score_json(with_value("high"))),
        ("boolean value", "/score", score_json(with_value(True))),
        ("list as a value", "/score", score_json(with_value([1, 2]))),
        ("object as a value", "/score", score_json(with_value({"a": 1}))),
        ("NaN literal", "/score", score_text(with_text("NaN"))),
        ("Infinity literal", "/score", score_text(with_text("Infinity"))),
        ("-Infinity literal", "/score", score_text(with_text("-Infinity"))),
        ("1e400 (decodes to infinity)", "/score", score_text(with_text("1e400"))),
        ("integer 10**400", "/score", score_json(with_value(10**400))),
        ("integer of 5000 digits", "/score", score_text(with_text("9" * 5000))),
        ("1e300 (finite, extreme)", "/score", score_json(with_value(1e300))),
        ("-1.7e308 (finite, extreme)", "/score", score_json(with_value(-1.7e308))),
        ("1e-320 (subnormal)", "/score", score_json(with_value(1e-320))),
        ("every value null", "/score", score_json([[None] * 21])),
        ("100,000-deep nesting", "/score", score_text(deep)),
        ("duplicate 'instances' key", "/score", score_text('{"instances": [' + json.dumps(row) + '], "instances": 5}')),
        ("invalid UTF-8", "/score", lambda: post(score, content=b'{"instances": [["\xff\xfe"]]}', headers=J)),
        ("pickle content type", "/score", lambda: post(score, content=b"\x80\x04K\x01.",
                                                       headers={"content-type": "application/vnd.bentoml+pickle"})),
        ("text/plain", "/score", lambda: post(score, content=b"1,2,3", headers={"content-type": "text/plain"})),
        ("no content type", "/score", lambda: raw(table, request_bytes("/score", {"Content-Length": "2"}, b"{}"))),
        ("form-urlencoded", "/score", lambda: post(score, data={"instances": "[]"})),
        ("two content types (pickle, json)", "/score", lambda: post(score, content=json.dumps({"instances": [row]}).encode(),
            headers=[("content-type", "application/vnd.bentoml+pickle"), ("content-type", "application/json")])),
        ("two content types (json, json)", "/score", lambda: post(score, content=json.dumps({"instances": [row]}).encode(),
            headers=[("content-type", "application/json"), ("content-type", "application/json")])),
        ("33 MB body, Content-Length", "/score", lambda: post(score, content=b" " * (33 << 20), headers=J)),
        ("33 MB body, chunked", "/score", lambda: post(score, content=iter([b" " * (1 << 20)] * 33), headers=J)),
        ("48 MB body from urllib (no 100-continue)", "/score", lambda: urllib_post(score, b" " * (48 << 20))),
        ("1 GB announced, Expect: 100-continue", "/score", lambda: raw(table, request_bytes(
            "/score", {**J, "Content-Length": str(1 << 30), "Expect": "100-continue"}))),
        ("slow body: headers and 5 bytes", "/score", lambda: raw(table, request_bytes(
            "/score", {**J, "Content-Length": "1000"}, b'{"ins'), wait=BODY_TIMEOUT_S + 20)),
        ("Content-Length larger than the body", "/score", lambda: raw(table, request_bytes(
            "/score", {**J, "Content-Length": "100"}, b"{}"), wait=BODY_TIMEOUT_S + 20)),
        ("negative Content-Length", "/score", lambda: raw(table, request_bytes("/score", {**J, "Content-Length": "-5"}))),
        ("two Content-Lengths", "/score", lambda: raw(table, request_bytes(
            "/score", [("Content-Type", "application/json"), ("Content-Length", "2"), ("Content-Length", "3")], b"{}"))),
        ("100 KB header", "/score", lambda: raw(table, request_bytes("/score", {**J, "X-Big": "a" * 100_000,
                                                                               "Content-Length": "2"}, b"{}"))),
        ("GET /score", "/score", lambda: (lambda r: (r.status_code, reason_of(r.status_code, r.content)))(
            httpx.get(score, timeout=30))),
        ("path traversal", "/../../etc/passwd", lambda: raw(table, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("CSV: JSON body", "/score_csv", lambda: post(csv_route, json={"file": "x"})),
        ("CSV: a URL instead of a file", "/score_csv", lambda: post(csv_route, data={"file": "http://127.0.0.1:1/x.csv"},
                                                                    files={"other": ("a", b"1")})),
        ("CSV: file name of 300 bytes", "/score_csv", lambda: post(csv_route, files={"file": ("a" * 296 + ".csv", good_csv)})),
        ("CSV: file name '../../etc/passwd'", "/score_csv", lambda: post(csv_route, files={"file": ("../../etc/passwd", good_csv)})),
        ("CSV: binary garbage", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", np.random.RandomState(0).bytes(4096))})),
        ("CSV: empty file", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", b"")})),
        ("CSV: a column missing", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", b"f00,f01\n1,2\n")})),
        ("CSV: 1e400 in a cell", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", csv_with("1e400"))})),
        ("CSV: 1e300 in a cell", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", csv_with("1e300"))})),
        ("CSV: explain=1000", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", good_csv)},
                                                         data={"explain": "1000"})),
        ("CSV: on_error=bogus", "/score_csv", lambda: post(csv_route, files={"file": ("x.csv", good_csv)},
                                                           data={"on_error": "bogus"})),
        ("CSV: broken multipart", "/score_csv", lambda: post(csv_route, content=b"--x\r\nnonsense",
                                                             headers={"content-type": "multipart/form-data; boundary=x"})),
        ("CSV: multipart without boundary", "/score_csv", lambda: post(
            csv_route, content=b"abc", headers={"content-type": "multipart/form-data"})),
        ("CSV: 1,001 file fields", "/score_csv", lambda: post(csv_route, files=[("f", ("x", b"1"))] * 1001)),
        ("images: corrupt PNG", "/score_images", lambda: post(images_route, files={"files": ("a.png", shirt[:60])})),
        ("images: text named .png", "/score_images", lambda: post(images_route, files={"files": ("a.png", b"hello")})),
        ("images: 400-megapixel PNG", "/score_images", lambda: post(images_route, files={"files": ("bomb.png", bomb)})),
        ("images: no files", "/score_images", lambda: post(images_route, files={"other": ("a", b"1")})),
        ("images: file name of 300 bytes", "/score_images", lambda: post(images_route,
                                                                         files={"files": ("a" * 296 + ".png", shirt)})),
        ("images: a file name of NUL and newline", "/score_images", lambda: raw(image, request_bytes(
            "/score_images", {"Content-Type": odd_name[1], "Content-Length": str(len(odd_name[0]))}, odd_name[0]))),
        ("image JSON: a null pixel", "/score", image_with(None)),
        ("image JSON: an object pixel", "/score", image_with({"r": 1})),
        ("image JSON: pixel 10**400", "/score", image_with(10**400)),
        ("image JSON: pixel 1e308", "/score", image_with(1e308)),
        ("image JSON: pixel 256", "/score", image_with(256)),
        ("image JSON: an object as the image", "/score", lambda: post(f"{image}/score", json={"instances": [{"a": 1}]})),
        ("image JSON: ragged rows", "/score", lambda: post(f"{image}/score", json={"instances": [[[1, 2], [3]]]})),
        ("image JSON: 20x20", "/score", lambda: post(f"{image}/score", json={"instances": [image_rows[0][:20, :20].tolist()]})),
        ("image JSON: mixed layouts (valid)", "/score", lambda: post(f"{image}/score", json={"instances": [
            image_rows[0].tolist(), image_rows[1][None].tolist()]})),
    ]


def run(repeat: int) -> tuple[list[tuple[str, str, Counter]], dict[str, object]]:
    from anomaly_vae import VAEAnomalyDetector
    from anomaly_vae.io.tables import EXACT_FLOATS

    work = Path(tempfile.mkdtemp(prefix="anomaly-vae-hostile-"))
    cardio = pd.read_csv(ROOT / "data" / "cardio.csv", **EXACT_FLOATS)
    normal = cardio[cardio["label"] == "normal"].drop(columns=["label"])
    table_det = VAEAnomalyDetector(epochs=5, random_state=0).fit(normal.iloc[:1200])
    table_det.save(work / "table")
    with np.load(ROOT / "data" / "fashion_mnist_sample.npz", allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    VAEAnomalyDetector(epochs=1, latent_dim=4, conv_channels=(8, 16), alpha=0.1, random_state=0).fit(
        images[labels == 0]).save(work / "image")
    row = normal.iloc[1300].tolist()
    servers = [serve(work / "table", work), serve(work / "image", work)]
    try:
        table, image = (s.url for s in servers)
        results = []
        for what, route, send in cases(table, image, row, images[labels == 0][:2]):
            answers = Counter(send() for _ in range(repeat))
            results.append((what, route, answers))
            print(f"{what:45s} {dict(answers)}", flush=True)
        final = httpx.post(f"{table}/score", json={"instances": [row]}, timeout=30)
        checks = {
            "still ready": all(httpx.get(f"{s.url}/readyz", timeout=10).status_code == 200 for s in servers),
            "exact after the attack": final.status_code == 200
                                      and final.json()["scores"] == table_det.anomaly_score(normal.iloc[1300:1301]).tolist(),
            "5xx in the server logs": sum(len(re.findall(r"status=5\d\d", s.log.read_text())) for s in servers),
            "tracebacks in the server logs": sum(s.log.read_text().count("Traceback") for s in servers),
        }
    finally:
        for s in servers:
            s.stop()
    return results, checks


def write(results: list[tuple[str, str, Counter]], checks: dict[str, object], repeat: int) -> str:
    statuses = Counter()
    for _, _, answers in results:
        for (status, _), n in answers.items():
            statuses[status] += n
    lines = [
        "# Hostile requests (`python benchmarks/hostile_requests.py`)", "",
        f"{os.cpu_count()} cores, Python {platform.python_version()}; two `bentoml serve` "
        f"(1 worker each) on 127.0.0.1: a dense model of data/cardio.csv and a conv model of Fashion-MNIST; body "
        f"timeout {BODY_TIMEOUT_S} s, size limit 32 MB. Each kind of request sent {repeat} times; `count` is how many "
        "times that status and reason came back. Status 0 would be a connection closed without an answer.", "",
        "| # | request | route | status | reason | count |", "|---:|---|---|---:|---|---:|",
    ]
    for k, (what, route, answers) in enumerate(results, 1):
        for (status, reason), n in sorted(answers.items()):
            lines.append(f"| {k} | {what} | `{route}` | {status} | {reason.replace('|', '/')} | {n} |")
    total = sum(statuses.values())
    fives = sum(n for st, n in statuses.items() if st >= 500)
    passed = (fives == 0 and statuses.get(0, 0) == 0 and checks["still ready"] and checks["exact after the attack"]
              and checks["5xx in the server logs"] == 0)
    lines += ["", "| total | count |", "|---|---:|", f"| kinds of request | {len(results)} |", f"| requests | {total} |"]
    lines += [f"| answered {s}xx | {sum(n for st, n in statuses.items() if st // 100 == s)} |" for s in (2, 4, 5)]
    lines += [f"| not answered (connection closed) | {statuses.get(0, 0)} |"]
    lines += [f"| {k} | {v} |" for k, v in checks.items()]
    lines += ["", "Bar: no 5xx, every request answered, both servers still ready and exact: "
                  f"{'met' if passed else 'NOT met'} ({fives} 5xx)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="times each request is sent (default 3)")
    args = ap.parse_args()
    results, checks = run(args.repeat)
    RESULTS.write_text(write(results, checks, args.repeat))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
