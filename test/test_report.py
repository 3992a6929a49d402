"""The report pages (issue 25) without a browser: the pictures (hand-computed colours), the page's
markup, its atomic writing, ``process.py``'s ``report.html`` and ``evaluate --report``. What a
browser makes of them is test_report_browser.py's."""

import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    ReportParser,
    gray,
    invoke,
    ok,
    read_report,
    rejected,
    results_of,
    write_job,
    write_png,
)

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.data.release import find_layout
from drac_algo.data.submission import write_submission
from drac_algo.serve.report import write_report
from drac_algo.serve.report_page import (
    CaseRow,
    Column,
    ReportPage,
    Thumb,
    check_report_path,
    outcome_rgb,
    render_page,
    shrink_mask,
    thumb_shape,
    write_page,
)
from drac_algo.tools.evaluate import main as evaluate_main

# --------------------------------------------------------------------------------------------
# Pictures


def test_a_one_pixel_lesion_stays_visible_in_a_thumbnail():
    mask = np.zeros((1024, 1024), np.uint8)
    mask[500, 700] = 1
    small = shrink_mask(mask, thumb_shape(mask.shape))
    assert small.shape == (128, 128) and small.dtype == bool
    assert small.sum() == 1 and small[500 // 8, 700 // 8]
    assert thumb_shape((512, 1024)) == (64, 128)
    assert thumb_shape((40, 30)) == (128, 96)  # small images are shown larger


def test_outcome_colours_are_blended_over_the_image():
    image = np.full((1, 4), 100, np.uint8)
    gt = np.array([[1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 1, 0]], np.uint8)
    rgb = outcome_rgb(image, gt, pred)
    # 0.35 * 100 + 0.65 * colour, rounded: TP yellow (240, 228, 66), FN sky blue
    # (86, 180, 233), FP vermillion (213, 94, 0); the last pixel is neither.
    assert rgb.tolist() == [[[191, 183, 78], [91, 152, 186], [173, 96, 35], [100, 100, 100]]]
    assert outcome_rgb(None, gt, pred)[0, 3].tolist() == [0, 0, 0]
    with pytest.raises(DracInputError, match=r"must have one \(H, W\)"):
        outcome_rgb(np.zeros((2, 4), np.uint8), gt, pred)


# --------------------------------------------------------------------------------------------
# The page


def _page(rows, sorted_by=None):
    columns = [Column("case", "text"), Column("Dice", digits=3), Column("thumb", "image")]
    return ReportPage(
        title="t",
        facts=[("Run", [("where", "<here>")])],
        summary=(["class", "Dice"], [["irma", "0.5"]]),
        columns=columns,
        rows=rows,
        legend=[("true positive", (240, 228, 66))],
        sorted_by=sorted_by,
    )


def test_the_page_escapes_text_and_marks_missing_values():
    evil = '<img src=x onerror="alert(1)">'
    thumb = Thumb("report/a%20b.png", "overlays/a.png", "a & b", 128, 96)
    page = _page([CaseRow(evil, [evil, None, thumb]), CaseRow("7", ["7", 0.25, None])], 1)
    text = render_page(page, "report")
    assert evil not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "&lt;here&gt;" in text
    parsed = ReportParser(text)
    assert [r.case for r in parsed.rows] == [evil, "7"]
    assert parsed.rows[0].values == [evil, "", None]  # missing: an empty sort value
    assert parsed.rows[1].values == ["7", "0.25", None]
    assert parsed.rows[0].images == ["report/a%20b.png"]
    assert parsed.rows[0].links == ["overlays/a.png"]
    assert parsed.headings[1]["aria-sort"] == "ascending" and "aria-sort" not in parsed.headings[0]
    assert 2 not in parsed.headings  # thumbnails do not sort
    assert "http" not in text.replace("http-equiv", "")  # nothing from the network
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        render_page(_page([CaseRow("x", ["x", 1.0])]), "report")


def test_a_failed_report_leaves_no_page_and_no_new_folder(tmp_path):
    page_path = tmp_path / "report.html"
    write_page(page_path, lambda assets: _page([CaseRow("1", ["1", 0.5, None])]))
    assert (tmp_path / "report" / ".drac-algo-output").is_file()

    def build(assets):
        assets.add_image("half.png", np.zeros((4, 4), np.uint8))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_page(page_path, build)
    # The old page is gone (it would link a folder being replaced); nothing half-written stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [".drac-algo-output"]


def test_the_report_folder_must_be_this_programs(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "mine.txt").write_text("someone's")
    with pytest.raises(DracInputError, match="refusing to replace .*report"):
        check_report_path(tmp_path / "report.html", "--report")
    with pytest.raises(DracInputError, match="expected a file name ending in .html"):
        check_report_path(tmp_path / "report.txt", "--report")
    assert (tmp_path / "report" / "mine.txt").read_text() == "someone's"


# --------------------------------------------------------------------------------------------
# process.py's report.html


def _check_files(folder: Path, parsed) -> None:
    for url in [*parsed.images, *(href for row in parsed.rows for href in row.links)]:
        assert (folder / unquote(url)).is_file(), url


def test_a_batch_run_writes_a_report_with_a_row_and_thumbnails_per_case(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    for seed in (1200, 86, 90):
        write_png(images / f"{seed:03d}.png", gray(seed))
    out = tmp_path / "out"
    result = ok(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    )
    assert f"report: {out / 'report.html'} (3 case(s)" in result.stderr
    results = results_of(out)
    assert results["report"] == "report.html"
    parsed = read_report(out / "report.html")
    assert parsed.body["data-cases"] == "3"
    assert [r.case for r in parsed.rows] == ["086", "090", "1200"]
    # case, NPI, then per class: pixels, components, thumbnail
    for row, case in zip(parsed.rows, results["cases"], strict=True):
        assert row.values[1] == repr(case["non_perfusion_index"])
        for k, index in enumerate((1, 2, 3)):
            stats = case["classes"][str(index)]
            assert row.values[2 + 3 * k : 4 + 3 * k] == [
                str(stats["area_px"]),
                str(stats["components"]),
            ]
        assert row.images == [f"report/{row.case}_{c.key}.png" for c in LESION_CLASSES]
        assert row.links == [f"overlays/{row.case}.png"] * 3
    _check_files(out, parsed)
    # IRMA is predicted everywhere (the tiny bundle's head): its thumbnail is tinted amber.
    thumb = cv2.imread(str(out / "report/086_irma.png"))[..., ::-1]
    assert thumb.shape == (128, 128, 3) and (thumb[..., 0] > thumb[..., 2]).all()
    text = (out / "report.html").read_text()
    assert results["settings"]["bundle"]["id"] in text


def test_no_report_writes_none_and_removes_an_earlier_one(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    args = ("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    ok(invoke(*args))
    assert (out / "report.html").is_file() and (out / "report").is_dir()
    ok(invoke(*args, "--no-report"))
    assert not (out / "report.html").exists() and not (out / "report").exists()
    assert results_of(out)["report"] is None


def test_a_report_that_fails_leaves_results_json_without_it(tiny_bundle, tmp_path, monkeypatch):
    from drac_algo.serve import assemble

    def broken(output_dir):
        raise DracInputError("cannot read the overlay of 086")

    monkeypatch.setattr(assemble, "write_report", broken)
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    args = ("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    rejected(invoke(*args), "cannot read the overlay of 086")
    results = results_of(out)
    assert results["report"] is None and not (out / "report.html").exists()
    assert [c["case"] for c in results["cases"]] == ["086"]


def test_a_grand_challenge_job_writes_no_report(tiny_bundle, tmp_path):
    out = tmp_path / "out"
    ok(invoke("--input", write_job(tmp_path / "in"), "--output", out, "--bundle", tiny_bundle,
              "--tta", "none", "--no-report"))  # fmt: skip
    assert not (out / "report.html").exists() and not (out / "report").exists()
    with pytest.raises(DracInputError, match="only a batch run"):
        write_report(out)


def test_the_report_is_refused_without_a_finished_run(tmp_path):
    with pytest.raises(DracInputError, match="holds no results.json of a finished"):
        write_report(tmp_path)


def test_the_report_uses_the_overlay_when_an_input_is_gone(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    ok(invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none"))
    shutil.rmtree(images)
    write_report(out)
    text = (out / "report.html").read_text()
    assert "could not be read any more" in text and "086.png" in text
    _check_files(out, read_report(out / "report.html"))
    shutil.rmtree(out / "overlays")
    with pytest.raises(DracInputError, match="neither the input .* nor the overlay"):
        write_report(out)
    assert not (out / "report.html").exists()


def test_a_report_folder_that_is_not_the_programs_is_refused_before_the_run(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    (out / "report" / "notes.txt").write_text("mine")
    result = invoke("--input", images, "--output", out, "--bundle", tiny_bundle)
    rejected(result, f"refusing to replace {out / 'report'}")
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------------------------
# evaluate --report


def _box(r0, r1, c0, c1, size=32):
    mask = np.zeros((size, size), np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


IDS = [86, 285, 1299]
# By hand: class 1: case 86 Dice 2/3 (gt 16 px, pred 8 inside), 285 not scored, 1299 Dice 0;
# class 2: 285 Dice 1, the others not scored; class 3 never scored. Mean Dice per case over its
# scored classes: 86 2/3, 285 1, 1299 0: worst first 1299, 86, 285.
GT = {86: {1: _box(0, 4, 0, 4)}, 285: {2: _box(0, 8, 0, 8)}, 1299: {1: _box(10, 12, 10, 12)}}
PRED = {86: {1: _box(0, 4, 0, 2)}, 285: {2: _box(0, 8, 0, 8)}, 1299: {3: _box(1, 2, 1, 2)}}


@pytest.fixture
def scored(tmp_path, make_drac):
    root = make_drac({"b": GT}, name="gt")
    zeros = np.zeros((32, 32), np.uint8)
    stacks = {i: np.stack([PRED[cid].get(i, zeros) for cid in IDS]) for i in (1, 2, 3)}
    write_submission(tmp_path / "pred", stacks)
    return root, tmp_path / "pred"


def _evaluate(*args):
    return CliRunner().invoke(evaluate_main, [str(a) for a in args])


def test_evaluate_report_lists_the_worst_cases_first(tmp_path, scored, tiny_bundle):
    gt, pred = scored
    run = tmp_path / "run"
    for member in ("irma/fold0-seed0", "nv/fold0-seed0"):
        write_png(run / member / "curves.png", gray(1, (30, 50)))
    shutil.copytree(tiny_bundle, run / "model")
    page = tmp_path / "eval.html"
    result = _evaluate("--gt", gt, "--pred", pred, "--report", page, "--run", run)
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"report: {page}" in result.output
    parsed = read_report(page)
    assert [r.case for r in parsed.rows] == ["1299.png", "086.png", "285.png"]
    assert [float(r.values[1]) for r in parsed.rows] == pytest.approx([0.0, 2 / 3, 1.0])
    # case, mean Dice, then per class: Dice, IoU, GT px, pred px, thumbnail
    first = parsed.rows[1].values  # 086
    assert first[2:6] == [repr(2 / 3), repr(0.5), "16", "8"]
    assert first[7:11] == ["", "", "0", "0"]  # NA not scored there
    assert parsed.headings[1].get("aria-sort") == "ascending"
    _check_files(tmp_path, parsed)
    assert "eval/dice_per_case.png" in parsed.images
    assert "eval/curves/irma_fold0-seed0.png" in parsed.images
    assert "eval/curves/nv_fold0-seed0.png" in parsed.images
    full = cv2.imread(str(tmp_path / "eval/full/086_irma.jpg"))[..., ::-1]
    assert full.shape == (32, 32, 3)
    # Dark image under the boxes: the 8 true positives yellow-ish, the other 8 sky blue (FN).
    assert (full[0:4, 0:2, 0] > full[0:4, 0:2, 2]).all()
    assert (full[0:4, 2:4, 2] > full[0:4, 2:4, 0]).all()
    text = page.read_text()
    assert "threshold 0.5" in text and "Training run" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--run", "RUN"], "--run names the training curves of --report"),
        (["--report", "out.txt"], "expected a file name ending in .html"),
        (["--report", "out.html", "--run", "RUN"], "no training curves (<task>/<member>/curves"),
        (["--report", "out.html", "--json", "out.html"], "must name different files"),
    ],
)
def test_evaluate_report_refuses_bad_options_before_scoring(tmp_path, scored, extra, message):
    gt, pred = scored
    (tmp_path / "RUN").mkdir()
    extra = [str(tmp_path / e) if e in ("RUN", "out.txt", "out.html") else e for e in extra]
    rejected(_evaluate("--gt", gt, "--pred", pred, *extra), message)
    assert not (tmp_path / "out.html").exists() and not (tmp_path / "out").exists()


def test_evaluate_report_of_a_process_run_names_the_run(tiny_bundle, tmp_path, make_drac):
    root = make_drac({"b": {86: {1: _box(0, 4, 0, 4)}, 90: {}}}, name="gt")
    images = find_layout(root).test_images
    out = tmp_path / "out"
    ok(invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none"))
    page = tmp_path / "eval.html"
    result = _evaluate("--gt", root, "--pred", out / "masks", "--report", page)
    assert result.exit_code == 0, result.output
    text = page.read_text()
    bundle_id = json.loads((out / "results.json").read_text())["settings"]["bundle"]["id"]
    assert bundle_id in text and "Timings" in text
    parsed = read_report(page)
    assert [r.case for r in parsed.rows] == ["086.png", "090.png"]  # 090 is scored in none
    _check_files(tmp_path, parsed)


@pytest.mark.slow
def test_the_quickstart_ends_by_naming_the_report(tiny_bundle, tmp_path, monkeypatch, capsys):
    """The quickstart's last step writes the scored report and its last lines name it (the
    training is replaced by the tiny bundle and one curves.png: minutes saved)."""
    from drac_algo.tools import quickstart
    from drac_algo.training import experiment

    def run_training(data_root, run_dir, configs, ctx, resume=False):
        write_png(run_dir / "irma" / "fold0-seed0" / "curves.png", gray(5, (40, 60)))
        shutil.copytree(tiny_bundle, run_dir / "model")
        return experiment.RunSummary({}, run_dir / "model", 0.0)

    monkeypatch.setattr(experiment, "run_training", run_training)
    workdir = tmp_path / "qs"
    quickstart.run_quickstart(workdir, n_train=2, n_test=3, size=48, epochs=None, seed=0)
    out = capsys.readouterr().out
    report = workdir / "evaluation" / "report.html"
    assert out.rstrip().splitlines()[-2:] == [
        f"The results on one page, worst cases first (open it in a browser): {report}",
        f"(the run's own page, without ground truth: {workdir / 'output' / 'report.html'})",
    ]
    parsed = read_report(report)
    assert len(parsed.rows) == 3
    assert "report/curves/irma_fold0-seed0.png" in parsed.images
    _check_files(report.parent, parsed)


def test_run_facts_name_the_component_rule_only_where_a_class_has_it():
    from drac_algo.serve.report import run_facts

    def entry(keep):
        return {
            "key": "irma",
            "threshold": 0.45,
            "min_component_px": 0,
            "fill_holes": False,
            "keep_components": keep,
            "members": [{"name": "irma m0", "input_size": 1024, "views": ["identity"]}],
        }

    def facts(classes):
        tables = dict(run_facts({"settings": {"classes": classes}}))
        return " | ".join(value for _, value in tables["Bundle"])

    assert "the 2 most confident component(s) kept" in facts({"1": entry(2)})
    assert "most confident" not in facts({"1": entry(0)})
    assert "most confident" not in facts(
        {"1": {k: v for k, v in entry(0).items() if k != "keep_components"}}
    )
