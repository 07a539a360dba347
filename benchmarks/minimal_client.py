"""The minimal pooled-httpx client the small-image benchmarks measure bgremove against.

It does the job and nothing else: one pooled ``httpx.Client`` shared by the worker
threads; per image the file's bytes as they are to the direct upload (ticket, then PUT),
one sync-mode submit, the result downloaded and written as it came. No image work, no
retries, no checks: the floor for the requests bgremove sends (4 per image).

    WAVESPEED_API_KEY=... python benchmarks/minimal_client.py --base-url URL \
        [--concurrency 16] -o OUTDIR FILE...
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SUBMIT_PATH = "/api/v3/wavespeed-ai/image-background-remover"


class MinimalClient:
    def __init__(self, base_url: str, api_key: str, concurrency: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))

    def job(self, src: Path, dst: Path) -> None:
        data = src.read_bytes()
        ticket = self.http.post(f"{self.base_url}/api/v3/media/uploads", headers=self.auth, json={
            "filename": src.name, "size": len(data), "content_type": "image/png"})
        upload = ticket.raise_for_status().json()["data"]
        put = upload["upload"]
        self.http.request(put["method"], put["url"], headers=put["headers"],
                          content=data).raise_for_status()
        answer = self.http.post(f"{self.base_url}{SUBMIT_PATH}", headers=self.auth, json={
            "image": upload["download_url"], "enable_sync_mode": True,
            "enable_base64_output": False})
        task = answer.raise_for_status().json()["data"]
        if task["status"] != "completed":
            raise RuntimeError(f"task {task['id']}: {task['status']}")
        dst.write_bytes(self.http.get(task["outputs"][0]).raise_for_status().content)

    def run(self, srcs: list[Path], out: Path, concurrency: int) -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(self.job, s, out / (s.stem + ".png")) for s in srcs]:
                future.result()

    def close(self) -> None:
        self.http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    client = MinimalClient(args.base_url, os.environ["WAVESPEED_API_KEY"], args.concurrency)
    try:
        client.run(args.files, args.output, args.concurrency)
    finally:
        client.close()


if __name__ == "__main__":
    main()
