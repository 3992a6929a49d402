"""Sockets and the GPU requirement: command line > environment > platform.json > defaults."""

import json

import pytest

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.serve.job_settings import (
    COMMAND_LINE,
    DEFAULT,
    OutputSocket,
    default_output_sockets,
    parse_output_specs,
    resolve_job_settings,
)

DEFAULT_SLUGS = {c.index: c.slug for c in LESION_CLASSES}


def platform_file(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "platform.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return folder


def test_defaults_without_any_source(tmp_path):
    job = resolve_job_settings(tmp_path, environ={})
    assert job.output_sockets == default_output_sockets()
    assert {i: s.slug for i, s in job.output_sockets.items()} == DEFAULT_SLUGS
    assert job.output_sockets[2].relative_path == f"images/{DEFAULT_SLUGS[2]}"
    assert (job.input_slug, job.require_gpu) == (None, False)
    assert set(job.sources.values()) == {DEFAULT}
    path = job.output_sockets[1].mask_path("/out").as_posix()
    assert path == f"/out/images/{DEFAULT_SLUGS[1]}/output.mha"


def test_specs_take_a_slug_and_an_optional_relative_path():
    sockets = parse_output_specs(["irma=my-irma", "3=nv_mask:masks/nv"], "here")
    assert sockets == {
        1: OutputSocket("my-irma", "images/my-irma"),
        3: OutputSocket("nv_mask", "masks/nv"),
    }
    assert sockets[3].mask_path("/out").as_posix() == "/out/masks/nv/output.mha"
    for bad, message in [
        ("irma", "expected CLASS=SLUG"),
        ("xyz=a", "here: unknown lesion class 'xyz'"),
        ("na=Bad Slug", "lower-case letters"),
        ("irma=a,1=b", "lower-case letters"),
        ("irma=a:/abs/path", "not a plain path below"),
        ("irma=a:images/../../etc", "not a plain path below"),
        ("irma=a:./x", "not a plain path below"),
        ("irma=a:images//x", "not a plain path below"),
        ("irma=a:Images/A", "lower-case letters"),
    ]:
        with pytest.raises(DracInputError, match=message):
            parse_output_specs([bad], "here")
    with pytest.raises(DracInputError, match="given twice"):
        parse_output_specs(["irma=a", "1=b"], "here")


def test_precedence_command_line_over_environment_over_file(tmp_path):
    model = platform_file(
        tmp_path / "model",
        {
            "input_socket": "file-image",
            "output_sockets": {"irma": "file-irma", "na": {"slug": "file-na"}, "3": "file-nv"},
            "require_gpu": True,
        },
    )
    env = {"DRAC_OUTPUT_SOCKETS": "na=env-na, nv=env-nv:out/nv", "DRAC_REQUIRE_GPU": "0"}
    job = resolve_job_settings(model, output_specs=["nv=cli-nv"], environ=env)
    assert job.input_slug == "file-image"
    assert {i: s.slug for i, s in job.output_sockets.items()} == {
        1: "file-irma",
        2: "env-na",
        3: "cli-nv",
    }
    assert job.output_sockets[3].relative_path == "images/cli-nv"
    assert job.require_gpu is False
    assert job.sources["output_socket_irma"].endswith("platform.json")
    assert job.sources["output_socket_na"] == "environment DRAC_OUTPUT_SOCKETS"
    assert job.sources["output_socket_nv"] == COMMAND_LINE
    assert job.sources["require_gpu"] == "environment DRAC_REQUIRE_GPU"
    cli = resolve_job_settings(model, input_slug="cli-image", require_gpu=True, environ=env)
    assert (cli.input_slug, cli.require_gpu) == ("cli-image", True)
    assert json.loads(json.dumps(cli.to_json()))["output_sockets"]["3"] == {
        "slug": "env-nv",
        "relative_path": "out/nv",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not readable JSON"),
        ([1, 2], "expected a JSON object, found list"),
        ({"sockets": {}}, r"unknown key\(s\) 'sockets'; valid: input_socket, output_sockets"),
        ({"output_sockets": {"ma": "x"}}, "unknown lesion class 'ma'"),
        ({"output_sockets": ["x"]}, "must be an object keyed by class"),
        ({"output_sockets": {"irma": {"slug": "a", "path": "b"}}}, "expected a slug or an object"),
        ({"output_sockets": {"irma": "a", "na": "a"}}, "share the slug 'a'"),
        (
            {"output_sockets": {"irma": "a", "na": {"slug": "b", "relative_path": "images/a"}}},
            "share the relative path 'images/a'",
        ),
        ({"output_sockets": {"nv": {"slug": "a", "relative_path": "../x"}}}, "not a plain path"),
        ({"require_gpu": "yes"}, "require_gpu must be true or false"),
    ],
)
def test_platform_file_errors_name_the_file(tmp_path, data, message):
    model = platform_file(tmp_path / "model", data)
    with pytest.raises(DracInputError, match=message) as info:
        resolve_job_settings(model, environ={})
    assert "platform.json" in str(info.value)


def test_duplicates_across_sources_and_bad_environment(tmp_path):
    model = platform_file(tmp_path / "model", {"output_sockets": {"irma": "taken"}})
    with pytest.raises(DracInputError, match=r"irma \(.*platform.json\) and na \(command line\)"):
        resolve_job_settings(model, output_specs=["na=taken"], environ={})
    with pytest.raises(DracInputError, match="environment DRAC_REQUIRE_GPU: expected 1/true"):
        resolve_job_settings(tmp_path, environ={"DRAC_REQUIRE_GPU": "maybe"})
    with pytest.raises(DracInputError, match="environment DRAC_INPUT_SOCKET"):
        resolve_job_settings(tmp_path, environ={"DRAC_INPUT_SOCKET": "Bad Slug"})
    env = resolve_job_settings(tmp_path, environ={"DRAC_REQUIRE_GPU": "TRUE"})
    assert env.require_gpu is True
