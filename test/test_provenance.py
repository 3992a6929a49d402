import logging
import re
import subprocess

import drac_algo
from drac_algo.common import provenance
from drac_algo.common.cli import add_log_file, setup_logging


def test_environment_records_every_package_and_the_torch_build():
    record = provenance.environment()
    expected = {"drac_algo", "python", "cuda", "cudnn", "git_commit", *provenance.PACKAGES.values()}
    assert set(record) == expected
    assert record["drac_algo"] == drac_algo.__version__
    import torch

    assert (
        record["torch"] == torch.__version__.split("+")[0] or record["torch"] == torch.__version__
    )
    assert record["cuda"] == torch.version.cuda


def test_missing_package_is_none():
    assert provenance.package_version("no-such-distribution-drac") is None


def test_git_commit_of_a_checkout_and_of_a_plain_folder(tmp_path):
    assert provenance.git_commit(tmp_path) is None
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "m"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert provenance.git_commit(tmp_path) == head.strip()
    (tmp_path / "f").write_text("y")
    assert provenance.git_commit(tmp_path) == head.strip() + "-dirty"


def test_version_line_names_project_torch_and_cuda():
    line = provenance.version_line("drac-process")
    assert re.fullmatch(
        rf"drac-process {re.escape(drac_algo.__version__)} \(torch .+, CUDA .+\)", line
    )


def test_log_file_gets_what_the_console_shows(tmp_path, capsys):
    setup_logging()
    handler = add_log_file(tmp_path / "run" / "train.log")
    try:
        logging.getLogger("drac_algo.test").info("epoch 3: val dice 0.512")
        logging.getLogger("drac_algo.test").debug("not shown without --verbose")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 3: val dice 0.512" in text and "not shown" not in text
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO drac_algo.test: ", text)
    assert "epoch 3: val dice 0.512" in capsys.readouterr().err
