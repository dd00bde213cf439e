"""Review bench: server-side time to render the review screen of a 512×512 CT slice.

Not a test: it prints figures beside the goal of issue 4 (the review screen of a 512×512
CT slice renders in under 200 ms server-side). It builds a scratch SQLite test database,
one run with one real 512×512 int16 CT file, leases the item to a clinician, then times with
Django's test client (the whole request: middleware, access check, queries, template):

- the review screen (HTML: viewer, presets, de-identified header table),
- the windowed PNG of the slice (decode, rescale, window, encode), cold and warm,
- a window/level drag (a new window on the cached slice).

    .venv/bin/python bench/review_bench.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scratch_db import scratch_database

GOAL_MS = 200.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    with scratch_database():
        run_bench(args.repeat)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run_bench(repeat: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from apps.core.roles import CLINICIAN, STEWARD
    from apps.core.testing import client_for, make_user
    from apps.review import rendering, services
    from apps.review.models import ReviewItem
    from tests.review import factories as f

    tmp = Path(tempfile.mkdtemp(prefix="review-bench-"))
    steward = make_user("bench-steward", STEWARD)
    clinician = make_user("bench-clinician", CLINICIAN)
    run = f.make_run(tmp, status="running")
    f.add_result(run, kind="dicom", modality="CT", content=f.dicom_bytes(rows=512, cols=512))
    f.finish(run)
    batch = services.create_batch(run, acting_user=steward, fraction=0.05, min_per_stratum=1)
    item = batch.items.get()
    now = timezone.now()
    ReviewItem.objects.filter(pk=item.pk).update(
        lease_user_id=clinician.pk, leased_at=now, lease_expires_at=now + timedelta(hours=1)
    )
    client = client_for(clinician)
    screen_url = f"/review/items/{item.pk}/"
    png_url = f"/review/items/{item.pk}/image.png?frame=0&c=40&w=400"

    def get(url: str) -> None:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)

    rendering._cache.clear()
    cold_png = timed(lambda: get(png_url), 1)[0]
    get(screen_url)  # warm the template loader and the URL resolver
    screen = timed(lambda: get(screen_url), repeat)

    def cold() -> None:
        rendering._cache.clear()
        get(png_url)

    png_cold = timed(cold, repeat)
    png_warm = timed(lambda: get(png_url), repeat)
    centers = iter(range(10_000))
    drag = timed(lambda: get(f"/review/items/{item.pk}/image.png?c={next(centers)}&w=350"), repeat)

    def line(name: str, values: list[float]) -> str:
        med = statistics.median(values)
        p95 = sorted(values)[max(0, int(len(values) * 0.95) - 1)]
        verdict = "ok" if med < GOAL_MS else "OVER"
        return (
            f"{name:<44} median {med:7.1f} ms   p95 {p95:7.1f} ms   "
            f"goal <{GOAL_MS:.0f} ms: {verdict}"
        )

    print(f"512x512 CT slice, {repeat} requests each, Django test client, SQLite")
    print(f"{'first PNG after start (cold process)':<44} {cold_png:7.1f} ms")
    print(line("review screen HTML (viewer + header)", screen))
    print(line("slice PNG, file decoded per request", png_cold))
    print(line("slice PNG, decoded slice cached", png_warm))
    print(line("window/level drag (new window, cached)", drag))
    both = statistics.median(screen) + statistics.median(png_cold)
    print(f"{'screen + cold PNG (one new item)':<44} median {both:7.1f} ms")


if __name__ == "__main__":
    main()
