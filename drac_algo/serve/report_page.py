"""The report page both reports share: one self-contained HTML file and, beside it, a folder of
PNG images it links by relative paths (``report.html`` + ``report/``), so that the two copied
anywhere together still open; no network, no script or style from elsewhere.

- :class:`ReportPage` is what a page shows: a header of facts (bundle, settings, device,
  timings, environment: what the caller gives), a per-class summary, one row per case
  (:class:`Column` and :class:`CaseRow`: numbers, text and thumbnails), a legend and figures.
- :func:`render_page` turns it into the HTML text; the case table sorts by any column with the
  few lines of :data:`SORT_SCRIPT` (missing values last either way; text in natural order, so
  ``86`` before ``285``), and once the page has loaded it writes the number of images that
  failed to load into ``<body data-broken-images>`` and says so on the page.
- :func:`write_page` writes the folder and the page atomically (the folder through
  :func:`drac_algo.common.fsutil.atomic_dir`, then the page through a temporary name), so a
  failure leaves no half-written report.
- The pictures: :func:`thumb_shape`, :func:`shrink_mask` (a lesion pixel stays visible at any
  scale), :func:`prediction_rgb` (one class's overlay) and :func:`outcome_rgb` (true positives,
  false positives and false negatives in :data:`OUTCOME_COLOURS`); :func:`encode_image`.
"""

from __future__ import annotations

import html
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_dir, atomic_write_text, check_output_file
from drac_algo.serve.outputs import OWNED_MARKER, check_replaceable
from drac_algo.serve.overlay import overlay

THUMB_SIDE = 128  # px, the longer side of a thumbnail
# Okabe-Ito colours (RGB), told apart with the common colour-vision deficiencies and on grey.
OUTCOME_COLOURS: dict[str, tuple[int, int, int]] = {
    "true positive": (240, 228, 66),  # yellow
    "false positive": (213, 94, 0),  # vermillion
    "false negative": (86, 180, 233),  # sky blue
}
OUTCOME_ALPHA = 0.65
# Full-size pictures of a textured image: a 1024 px PNG is ~1.4 MB and 0.14 s to encode, a JPEG
# of this quality ~0.5 MB and 0.01 s, and shows the same. Thumbnails stay PNG.
JPEG_QUALITY = 90


# --------------------------------------------------------------------------------------------
# Pictures


def thumb_shape(shape: tuple[int, int], side: int = THUMB_SIDE) -> tuple[int, int]:
    """(H, W) of the thumbnail of an (H, W) image: the longer side ``side`` px, aspect kept."""
    h, w = int(shape[0]), int(shape[1])
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def shrink_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W[, 3]) uint8 resized to ``shape`` (area averaging down, nearest neighbour up)."""
    down = shape[0] * shape[1] < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if down else cv2.INTER_NEAREST
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)


def shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) mask (non-zero = lesion) resized to ``shape`` as bool: a thumbnail pixel is set
    when any lesion pixel falls inside it, so a lesion of one pixel stays visible."""
    on = (np.asarray(mask) != 0).astype(np.float32)
    if on.shape == tuple(shape):
        return on > 0
    return shrink_image(on, shape) > 0


def prediction_rgb(image: np.ndarray, mask: np.ndarray, index: int) -> np.ndarray:
    """(H, W, 3) uint8: the (H, W) uint8 ``image`` with class ``index``'s mask tinted and
    outlined in the class colour (:func:`drac_algo.serve.overlay.overlay`)."""
    return overlay(image, {index: mask}, outline=True)


def outcome_rgb(image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: true positives (``gt`` and ``pred``), false positives (``pred`` only)
    and false negatives (``gt`` only) blended in :data:`OUTCOME_COLOURS` over the (H, W) uint8
    ``image`` (black when None). ``gt``, ``pred``: (H, W), non-zero = lesion."""
    g, p = np.asarray(gt) != 0, np.asarray(pred) != 0
    if image is None:
        image = np.zeros(g.shape, np.uint8)
    if image.shape != g.shape or p.shape != g.shape:
        raise DracInputError(
            f"outcome image: image {image.shape}, ground truth {g.shape} and prediction "
            f"{p.shape} must have one (H, W)"
        )
    out = np.repeat(image[:, :, None], 3, axis=2)
    for where, colour in zip((g & p, p & ~g, g & ~p), OUTCOME_COLOURS.values(), strict=True):
        # Only the lesion pixels are blended: a full-size image is mostly neither.
        grey = image[where].astype(np.float32)[:, None]
        blended = (1 - OUTCOME_ALPHA) * grey + OUTCOME_ALPHA * np.float32(colour)
        out[where] = np.rint(blended).astype(np.uint8)
    return out


def encode_image(array: np.ndarray, suffix: str = ".png") -> bytes:
    """(H, W) grey or (H, W, 3) RGB uint8 as ``.png`` (OpenCV's fastest compression) or
    ``.jpg`` (quality :data:`JPEG_QUALITY`) bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix == ".jpg" else []
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(array), params)
    if not ok:
        raise DracInputError(f"{suffix} encoding failed for an array of shape {array.shape}")
    return encoded.tobytes()


# --------------------------------------------------------------------------------------------
# The page


@dataclass(frozen=True)
class Thumb:
    """One picture in the case table: ``src`` (the thumbnail) and ``href`` (the full-size image
    a click opens), URLs relative to the page; ``alt`` says what it shows."""

    src: str
    href: str
    alt: str
    width: int
    height: int


@dataclass(frozen=True)
class Column:
    """A column of the case table: ``kind`` "num" (shown with ``digits`` decimals), "text" (both
    sortable) or "image" (a :class:`Thumb`); ``group`` heads a run of columns (a class)."""

    label: str
    kind: str = "num"
    group: str = ""
    digits: int = 0
    title: str = ""


Value = int | float | str | Thumb | None  # None: missing (shown as a dash, sorted last)


@dataclass
class CaseRow:
    """One case: its name and one value per :class:`Column`."""

    name: str
    values: list[Value]


@dataclass
class ReportPage:
    """What a report shows, top to bottom. ``facts``: header tables, (heading, [(label, text)]);
    ``summary``: the per-class table's header and rows (text); ``rows`` in the order shown,
    sorted ascending by column ``sorted_by`` when it is not None; ``legend``: (label, RGB);
    ``figures``: (caption, URL); ``notes``: sentences under the title."""

    title: str
    facts: list[tuple[str, list[tuple[str, str]]]]
    summary: tuple[list[str], list[list[str]]]
    columns: list[Column]
    rows: list[CaseRow]
    legend: list[tuple[str, tuple[int, int, int]]]
    sorted_by: int | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    subtitle: str = ""


# The case table's sorting and the broken-image count; inline, so the page needs nothing else.
SORT_SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("case-table");
  var body = table.tBodies[0];
  function sortBy(th, direction) {
    var col = Number(th.dataset.col), numeric = th.dataset.kind === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === "" || y === "") return (x === "") - (y === "");  // missing last, both ways
      var c = numeric ? Number(x) - Number(y)
                      : x.localeCompare(y, undefined, {numeric: true});
      return direction === "ascending" ? c : -c;
    });
    table.querySelectorAll("th[data-col]").forEach(function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", direction);
    rows.forEach(function (row) { body.appendChild(row); });
  }
  table.querySelectorAll("th[data-col]").forEach(function (th) {
    th.addEventListener("click", function () {
      sortBy(th, th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending");
    });
  });
  window.addEventListener("load", function () {
    var broken = Array.prototype.filter.call(document.images, function (img) {
      return !img.complete || img.naturalWidth === 0;
    });
    document.body.dataset.brokenImages = String(broken.length);
    if (broken.length) {
      var banner = document.getElementById("broken");
      banner.textContent = broken.length + " image(s) did not load, e.g. " +
        broken[0].getAttribute("src") + ": keep the folder " + document.body.dataset.assets +
        "/ beside this page when copying it.";
      banner.hidden = false;
    }
  });
})();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.4em 0 .5em; }
.subtitle, .note { color: #555; margin: .2em 0; }
#broken { background: #fde2e1; border: 1px solid #c00; padding: .5em; }
details#facts { margin: .8em 0; } details#facts summary { cursor: pointer; color: #555; }
.facts { display: flex; flex-wrap: wrap; gap: .6em 1.5em; align-items: flex-start;
  margin-top: .4em; }
.facts table { border-collapse: collapse; font-size: 12px; }
.facts caption { text-align: left; font-weight: 600; padding-bottom: .2em; }
.facts th { text-align: left; font-weight: normal; color: #555; padding: 1px .8em 1px 0;
  vertical-align: top; white-space: nowrap; }
.facts td { padding: 1px 0; max-width: 40em; overflow-wrap: anywhere; }
table.grid { border-collapse: collapse; }
table.grid th, table.grid td { border: 1px solid #ddd; padding: 3px 6px; }
table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.grid thead th { background: #f3f3f3; position: sticky; top: 0; z-index: 1; }
th[data-col] { cursor: pointer; user-select: none; }
th[data-col]::after { content: " \\2195"; color: #aaa; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: #222; }
th[aria-sort="descending"]::after { content: " \\25BC"; color: #222; }
#case-table tbody tr:nth-child(even) { background: #fafafa; }
td.image { padding: 2px; } td.image img { display: block; }
.legend span.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: -.15em;
  margin: 0 .3em 0 1em; border: 1px solid #888; }
figure { display: inline-block; margin: 0 1em 1em 0; } figcaption { color: #555; }
figure img { max-width: 640px; border: 1px solid #ddd; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _number(value: int | float, digits: int) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if digits else f"{value:,}"


def _cell(column: Column, value: Value) -> str:
    if column.kind == "image":
        if not isinstance(value, Thumb):
            return '<td class="image"></td>'
        return (
            f'<td class="image"><a href="{_esc(value.href)}" target="_blank">'
            f'<img src="{_esc(value.src)}" alt="{_esc(value.alt)}" title="{_esc(value.alt)}" '
            f'width="{value.width}" height="{value.height}"></a></td>'
        )
    if value is None or (isinstance(value, float) and math.isnan(value)):
        title = f' title="{_esc(column.title)}"' if column.title else ""
        return f'<td class="{column.kind}" data-v=""{title}>\u2013</td>'
    if column.kind == "num":
        return f'<td class="num" data-v="{value!r}">{_number(value, column.digits)}</td>'
    return f'<td class="text" data-v="{_esc(value)}">{_esc(value)}</td>'


def _case_table(page: ReportPage) -> str:
    cols = page.columns
    groups, top = [], []
    for column in cols:
        if groups and groups[-1][0] == column.group:
            groups[-1][1] += 1
        else:
            groups.append([column.group, 1])
    two_rows = any(group for group, _ in groups)
    heads = []
    for i, column in enumerate(cols):
        attrs = f' title="{_esc(column.title)}"' if column.title else ""
        if column.kind != "image":
            attrs += f' data-col="{i}" data-kind="{column.kind}"'
            if page.sorted_by == i:
                attrs += ' aria-sort="ascending"'
        heads.append(f"<th{attrs}>{_esc(column.label)}</th>")
    if two_rows:
        top = [
            f'<th colspan="{span}">{_esc(group)}</th>' if span > 1 or group else "<th></th>"
            for group, span in groups
        ]
    rows = [
        f'<tr data-case="{_esc(row.name)}">'
        + "".join(_cell(c, v) for c, v in zip(cols, row.values, strict=True))
        + "</tr>"
        for row in page.rows
    ]
    head = (f"<tr>{''.join(top)}</tr>" if two_rows else "") + f"<tr>{''.join(heads)}</tr>"
    return (
        f'<table id="case-table" class="grid"><thead>{head}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def render_page(page: ReportPage, assets: str) -> str:
    """The page's HTML text; ``assets`` is the name of the image folder beside it (named in the
    message shown when an image does not load)."""
    for row in page.rows:
        if len(row.values) != len(page.columns):
            raise ValueError(
                f"case {row.name}: {len(row.values)} values for {len(page.columns)} columns"
            )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(page.title)}</title><style>{STYLE}</style></head>",
        f'<body data-cases="{len(page.rows)}" data-assets="{_esc(assets)}">',
        f"<h1>{_esc(page.title)}</h1>",
    ]
    if page.subtitle:
        parts.append(f'<p class="subtitle">{_esc(page.subtitle)}</p>')
    parts += [f'<p class="note">{_esc(note)}</p>' for note in page.notes]
    parts.append('<p id="broken" hidden></p>')
    # The header: what ran, where and how long; open, and one click folds it away.
    headings = ", ".join(heading.lower() for heading, _ in page.facts)
    parts.append(f'<details open id="facts"><summary>{_esc(headings)}</summary>')
    parts.append('<div class="facts">')
    for heading, facts in page.facts:
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
        parts.append(f"<table><caption>{_esc(heading)}</caption>{rows}</table>")
    parts.append("</div></details>")
    header, summary_rows = page.summary
    parts.append('<h2>Per class</h2><table class="grid" id="summary"><thead><tr>')
    parts += [f"<th>{_esc(h)}</th>" for h in header]
    parts.append("</tr></thead><tbody>")
    for summary_row in summary_rows:
        cells = [f"<th>{_esc(summary_row[0])}</th>"]
        cells += [f'<td class="num">{_esc(v)}</td>' for v in summary_row[1:]]
        parts.append(f"<tr>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    for caption, src in page.figures:
        parts.append(
            f'<figure><a href="{_esc(src)}" target="_blank"><img src="{_esc(src)}" '
            f'alt="{_esc(caption)}"></a><figcaption>{_esc(caption)}</figcaption></figure>'
        )
    parts.append(f"<h2>Cases ({len(page.rows)})</h2>")
    legend = "".join(
        f'<span class="swatch" style="background: rgb{colour}"></span>{_esc(label)}'
        for label, colour in page.legend
    )
    parts.append(
        f'<p class="legend">Thumbnails:{legend}. Click a column heading to sort, a thumbnail '
        "for the full-size image.</p>"
    )
    parts.append(_case_table(page))
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


class Assets:
    """The image folder of a page being written: files go into ``folder`` (the temporary folder
    that becomes the final one), and the page links them as ``<name>/<file>``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self._used: set[str] = set()

    def file_name(self, stem: str, suffix: str = ".png") -> str:
        """A file name for ``stem`` that is safe in a URL and on every file system, and not
        used yet in this folder (a number is added when two stems clean up alike)."""
        clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
        name, n = f"{clean}{suffix}", 1
        while name.lower() in self._used:
            n += 1
            name = f"{clean}-{n}{suffix}"
        self._used.add(name.lower())
        return name

    def url(self, relative: str) -> str:
        return quote(f"{self.name}/{relative}")

    def add_image(self, relative: str, array: np.ndarray) -> str:
        """Write ``array`` ((H, W) or (H, W, 3) RGB uint8) as ``<folder>/<relative>`` (PNG or,
        for a ``.jpg`` name, JPEG); returns its URL."""
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(array, path.suffix.lower()))
        return self.url(relative)

    def add_copy(self, relative: str, source: Path) -> str:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return self.url(relative)


def assets_folder(html_path: Path) -> Path:
    """The image folder of the page ``html_path``: ``report.html`` -> ``report/``."""
    return html_path.with_suffix("")


def check_report_path(html_path: Path, what: str) -> Path:
    """Refuse, before any work, a page path that is not ``*.html``, cannot be written, or whose
    image folder exists and is not this program's. ``what`` names the option."""
    html_path = Path(html_path)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise DracInputError(
            f"{what} {html_path}: expected a file name ending in .html (its images go into the "
            f"folder {assets_folder(html_path).name}/ beside it)"
        )
    check_output_file(html_path, what)
    check_replaceable(assets_folder(html_path))
    return html_path


def write_page(html_path: Path, build: Callable[[Assets], ReportPage]) -> Path:
    """Write a report: ``build(assets)`` writes the images into ``assets`` and returns the page;
    the image folder replaces the old one (marked as this program's) only once the page is
    rendered, and the page is written last, under a temporary name then renamed. Any failure
    leaves no new folder and no page."""
    html_path = Path(html_path)
    folder = assets_folder(html_path)
    check_replaceable(folder)
    html_path.unlink(missing_ok=True)  # from here on it would link images being replaced
    with atomic_dir(folder) as tmp:
        (tmp / OWNED_MARKER).write_text("written by drac_algo.serve.report_page\n")
        page = build(Assets(tmp, folder.name))
        text = render_page(page, folder.name)
    atomic_write_text(html_path, text)
    return html_path
