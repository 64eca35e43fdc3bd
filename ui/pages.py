"""Rendering one PDF page as a PNG, for the app to show next to a passage.

The PDF comes from a user, so pdfium runs in a worker process with an
address-space cap and a timeout, and the scale is chosen from the page size
so the image never has more than `MAX_SIDE_PX` pixels on its longest side: a
page may declare a 14,400 pt MediaBox, which at the usual scale would be a
bitmap of about 1.5 GiB inside the app's process. No Streamlit here (the app
caches the results); this module stays light because each worker imports it.
"""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessExpired, ProcessPool

MAX_SIDE_PX = 2000
SCALE = 1.4  # about 100 dpi: a whole page readable in the app's column
TIMEOUT_S = 20.0
# pdfium reserves a few hundred MB of address space before drawing a pixel;
# a page at the pixel budget needs about 16 MB more.
MEMORY_MB = 1024

_TEXT_ABOVE = "its text is shown above."
MISSING = f"The PDF file is no longer at this path; {_TEXT_ABOVE}"
TOO_LARGE = f"This page is too large to render; {_TEXT_ABOVE}"


@dataclass(frozen=True)
class PageImage:
    """A rendered page (`png`), or why there is none (`problem`)."""

    png: bytes | None
    problem: str = ""


def scale_for(width_pt: float, height_pt: float, max_side_px: int = MAX_SIDE_PX) -> float:
    """The usual scale, or less when the longest side would pass the budget.
    pdfium rounds the bitmap size, hence the pixel of slack."""
    longest = max(width_pt, height_pt, 1.0)
    return min(SCALE, (max_side_px - 1) / longest)


def render_page(
    path: str,
    page: int,
    *,
    max_side_px: int = MAX_SIDE_PX,
    timeout: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
) -> PageImage:
    """Page `page` (1-based) of the PDF at `path`, drawn in a capped worker."""
    # forkserver: the worker starts from a small clean process, not a fork of
    # the app with its model and threads.
    pool = ProcessPool(
        max_workers=1,
        context=multiprocessing.get_context("forkserver"),
        initializer=_limit_memory,
        initargs=(memory_mb,),
    )
    try:
        future = pool.schedule(_render_png, args=(path, page, max_side_px), timeout=timeout)
        return PageImage(future.result())
    except FileNotFoundError:
        return PageImage(None, MISSING)
    except MemoryError:
        return PageImage(None, TOO_LARGE)
    except FutureTimeout:
        return PageImage(None, f"This page took over {timeout:g} s to render; {_TEXT_ABOVE}")
    except ProcessExpired as exc:  # pdfium aborts on some allocation failures
        return PageImage(None, _could_not(f"the renderer crashed, exit code {exc.exitcode}"))
    except Exception as exc:  # pdfium's errors on a broken or changed file
        return PageImage(None, _could_not(f"{exc.__class__.__name__}: {exc}"))
    finally:
        pool.stop()
        pool.join()


def _could_not(reason: str) -> str:
    return f"This page could not be rendered ({reason[:200]}); {_TEXT_ABOVE}"


def _limit_memory(megabytes: int) -> None:
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _render_png(path: str, page: int, max_side_px: int) -> bytes:
    """In the worker: the page as PNG bytes. Exceptions travel back to
    `render_page` (a MemoryError included: the worker is discarded)."""
    import io

    import pypdfium2 as pdfium

    with open(path, "rb") as fh:  # FileNotFoundError, not pdfium's generic one
        pdf = pdfium.PdfDocument(fh.read())
    try:
        if not 1 <= page <= len(pdf):
            raise ValueError(f"the file has {len(pdf)} page(s), not {page}")
        handle = pdf[page - 1]
        width, height = handle.get_size()
        scale = scale_for(width, height, max_side_px)
        image = handle.render(scale=scale).to_pil()
    finally:
        pdf.close()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
