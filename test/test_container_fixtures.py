"""The container test's fixtures (test/container/) stay in step with the code, without Docker:
``process.py``'s pipeline run here on ``inputs/<mode>`` with ``model/`` must reproduce
``expected/<mode>`` by the same rules ``test.sh`` applies to the container (compare.py).

When a change to the outputs is intended, regenerate the expected outputs with
``.venv/bin/python test/container/make_fixtures.py --expected-only`` and commit them.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from drac_algo.serve.pipeline import RunConfig, run

FIXTURES = Path(__file__).resolve().parent / "container"
MODES = ("gc-job", "batch")
# The container test's runs (make_fixtures.RUNS): name -> (inputs/<mode>, platform.json or None).
RUNS = {
    "gc-job": ("gc-job", None),
    "batch": ("batch", None),
    "gc-job-sockets": ("gc-job", FIXTURES / "platform-sockets.json"),
}


def _load_compare():
    # test/ is not a package (and "test" is also a standard-library package), so load by path.
    spec = importlib.util.spec_from_file_location("container_compare", FIXTURES / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Each mode's output folder from one local CPU fp32 run, as make_fixtures.py makes them."""
    root = tmp_path_factory.mktemp("container_outputs")
    folders = {}
    # One thread, as make_fixtures.py runs: the same summation order, and no slowdown from
    # threads competing for cores with other test processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model_sockets = root / "model-sockets"
    shutil.copytree(FIXTURES / "model", model_sockets)
    shutil.copy(FIXTURES / "platform-sockets.json", model_sockets / "platform.json")
    try:
        for name, (mode, platform) in RUNS.items():
            folders[name] = root / name
            run(
                RunConfig(
                    input_dir=FIXTURES / "inputs" / mode,
                    output_dir=folders[name],
                    bundle=FIXTURES / "model" if platform is None else model_sockets,
                    device="cpu",
                    precision="fp32",
                )
            )
    finally:
        torch.set_num_threads(threads)
    return folders


@pytest.mark.parametrize("name", RUNS)
def test_local_run_reproduces_expected_outputs(outputs, name):
    problems = compare.compare_outputs(FIXTURES / "expected" / name, outputs[name])
    assert not problems, "\n".join(problems)


def test_the_socket_run_writes_where_platform_json_says():
    expected = FIXTURES / "expected" / "gc-job-sockets"
    written = sorted(p.parent.relative_to(expected).as_posix() for p in expected.rglob("*.mha"))
    platform = json.loads((FIXTURES / "platform-sockets.json").read_text())["output_sockets"]
    assert written == sorted(
        v["relative_path"] if isinstance(v, dict) else f"images/{v}" for v in platform.values()
    )
    results = json.loads((expected / "results.json").read_text())
    slugs = {v["slug"] if isinstance(v, dict) else v for v in platform.values()}
    assert set(results["settings"]["output_slugs"].values()) == slugs


def test_expected_outputs_are_not_trivial():
    # A fixture of empty masks would let an algorithm that finds nothing pass: every class must
    # have lesion pixels in some case, and at least one mask must be empty (the empty-vs-empty
    # rule gets exercised too).
    areas = {}
    for mode in MODES:
        results = json.loads((FIXTURES / "expected" / mode / "results.json").read_text())
        for case in results["cases"]:
            for index, cls in case["classes"].items():
                areas.setdefault(index, []).append(cls["area_px"])
    assert sorted(areas) == ["1", "2", "3"]
    assert all(max(a) > 0 for a in areas.values()), areas
    assert any(min(a) == 0 for a in areas.values()), areas


def test_compare_catches_a_changed_mask(outputs, tmp_path):
    import SimpleITK as sitk

    actual = tmp_path / "gc-job"
    shutil.copytree(outputs["gc-job"], actual)
    rel = Path("images/nonperfusion-areas-segmentation/output.mha")
    image = sitk.ReadImage(str(actual / rel))
    mask = sitk.GetArrayFromImage(image)
    mask[: mask.shape[0] // 4] = 1 - mask[: mask.shape[0] // 4]  # flip the top quarter
    flipped = sitk.GetImageFromArray(mask)
    flipped.CopyInformation(image)
    flipped.SetOrigin((0.0, 0.0))
    sitk.WriteImage(flipped, str(actual / rel))

    problems = compare.compare_outputs(FIXTURES / "expected" / "gc-job", actual)

    assert any(p.startswith(f"{rel}: Dice") for p in problems), problems
    assert any(p.startswith(f"{rel}: origin") for p in problems), problems


def test_compare_catches_results_and_missing_files(outputs, tmp_path):
    actual = tmp_path / "batch"
    shutil.copytree(outputs["batch"], actual)
    results = json.loads((actual / "results.json").read_text())
    results["cases"][0]["classes"]["2"]["area_px"] += 100
    results["classes"]["3"]["status"] = "missing from the model bundle"
    (actual / "results.json").write_text(json.dumps(results))
    (actual / "3.nii.gz").unlink()
    (actual / "overlays" / "605.png").unlink()
    (actual / "stray.txt").write_text("?")

    problems = compare.compare_outputs(FIXTURES / "expected" / "batch", actual)

    expected_starts = [
        "results.json: case 003 class 2 (na) area_px is",
        "results.json: classes is",
        "3.nii.gz: missing",
        "overlays/605.png: missing",
        "stray.txt: unexpected file",
    ]
    for start in expected_starts:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected_starts), problems
