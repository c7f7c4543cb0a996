"""Report files, pre-flight (stop and drop), the decode cache and the `check` command's exit codes."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from curation_builders import HEIGHT, WIDTH, add_box, clean_coco, write

from cvtrain.curation import ChecksConfig, DatasetCheckError, check_dataset, preflight, run_checks
from cvtrain.data.loading import build_index


@pytest.fixture
def checks(tmp_path) -> ChecksConfig:
    return ChecksConfig(cache_file=tmp_path / "cache.json", workers=1)


@pytest.fixture
def flawed(tmp_path):
    """A clean set plus one box outside its image and one missing image (with a box of its own)."""
    root = tmp_path / "set"
    data = clean_coco(root)
    add_box(data, 2, 1, [50, 30, 30, 16], segmentation=None)
    data["images"].append({"id": 9, "file_name": "gone.png", "width": WIDTH, "height": HEIGHT})
    add_box(data, 9, 2, [4, 4, 10, 10])
    return write(root, data, {"train": [1, 2, 3, 4, 5, 9], "val": [6, 7, 8]})


def test_report_files(tmp_path, flawed, checks):
    report = check_dataset(flawed, checks, image_size=512, progress=False)
    folder = report.write(tmp_path / "out")
    saved = json.loads((folder / "report.json").read_text())
    assert saved["schema_version"] == 1
    assert set(saved) == {"schema_version", "tool", "dataset", "image_size", "config", "summary", "counts",
                          "statistics", "findings"}
    assert saved["summary"] == {"errors": 2, "warnings": report.count("warning"), "infos": report.count("info"),
                                "exit_code": 1, "usable": True}
    assert {f["code"] for f in saved["findings"] if f["severity"] == "error"} == {"box.outside_image", "image.missing"}
    assert set(saved["findings"][0]["location"]) == {"file", "line", "column", "image", "image_id", "annotation_id",
                                                     "split"}
    html = (folder / "report.html").read_text()
    for section in ("summary", "statistics", "plots", "crops", "findings"):
        assert f"id='{section}'" in html
    assert len(re.findall(r"src='data:image/png;base64,", html)) >= 3  # two plots and a crop at least
    assert not re.search(r"(src|href)=['\"]https?:", html)  # self-contained
    assert "box.outside_image" in report.summary_table() and "report:" in report.summary_table()
    assert "<table>" in report._repr_html_()


def test_preflight_stops_on_errors(tmp_path, flawed, checks):
    index = build_index(flawed)
    with pytest.raises(DatasetCheckError) as caught:
        preflight(index, checks, 512, tmp_path / "run", progress=False)
    assert caught.value.exit_code == 1
    assert "2 error(s)" in str(caught.value) and str(tmp_path / "run" / "report.html") in str(caught.value)
    assert (tmp_path / "run" / "report.json").is_file()


def test_preflight_drops_what_errors_point_at(tmp_path, flawed, checks):
    index = build_index(flawed)
    before = (len(index.images), len(index.annotations))
    kept, report = preflight(index, checks.model_copy(update={"on_error": "drop"}), 512, tmp_path / "run",
                             progress=False)
    assert report.count("error") == 2
    assert (len(index.images), len(index.annotations)) == before  # the input index is untouched
    assert len(kept.images) == before[0] - 1 and len(kept.annotations) == before[1] - 2
    dropped = json.loads((tmp_path / "run" / "dropped.json").read_text())
    assert [(i["file_name"], i["reason"]) for i in dropped["images"]] == [("images/gone.png", "image.missing")]
    assert sorted(a["reason"] for a in dropped["annotations"]) == ["box.outside_image", "image dropped"]
    assert run_checks(kept, checks, progress=False).count("error") == 0


def test_preflight_passes_clean_data_through(tmp_path, checks):
    config = write(tmp_path / "set", clean_coco(tmp_path / "set"))
    index = build_index(config)
    kept, report = preflight(index, checks, 512, tmp_path / "run", progress=False)
    assert kept is index and report.exit_code == 0
    assert (tmp_path / "run" / "report.html").is_file() and not (tmp_path / "run" / "dropped.json").exists()


def test_decode_cache_is_used_and_invalidated(tmp_path, checks):
    config = write(tmp_path / "set", clean_coco(tmp_path / "set"))
    assert check_dataset(config, checks, progress=False).count("error") == 0
    cache = json.loads(checks.cache_file.read_text())
    path = str((tmp_path / "set/images/1.png").resolve())
    assert cache["entries"][path]["result"]["width"] == WIDTH
    cache["entries"][path]["result"]["width"] = 999  # a stale entry would now show as a size mismatch
    checks.cache_file.write_text(json.dumps(cache))
    assert [f.image_id for f in check_dataset(config, checks, progress=False).errors] == [1]
    os.utime(path, ns=(1, 1))  # a changed mtime changes the key: decoded again
    assert check_dataset(config, checks, progress=False).count("error") == 0


def test_without_decoding_only_headers_are_read(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root)
    (root / "images/1.png").write_bytes((root / "images/1.png").read_bytes()[:200])  # header intact, pixels cut
    config = write(root, data)
    assert [f.code for f in check_dataset(config, checks, progress=False).errors] == ["image.corrupt"]
    quick = check_dataset(config, checks.model_copy(update={"decode_images": False}), progress=False)
    assert quick.count("error") == 0


def command(*, config=None, data=None, overrides=(), out=None) -> int:
    """``cvtrain check`` through the CLI's main, as a user runs it."""
    from cvtrain.cli import main

    argv = ["check", *(["-c", config] if config else []), *(["--data", data] if data else []), *overrides,
            *(["--out", out] if out else [])]
    return main(argv)


def test_command_exit_codes(tmp_path, flawed, capsys):
    clean = write(tmp_path / "clean", clean_coco(tmp_path / "clean"))
    dataset = tmp_path / "clean.yaml"
    dataset.write_text(f"format: coco\nroot: {clean.root}\nannotations: annotations.json\nimages: images\n")
    cache = f"checks.cache_file={tmp_path / 'cache.json'}"
    assert command(data=str(dataset), overrides=[cache], out=str(tmp_path / "a")) == 0
    assert (tmp_path / "a" / "report.html").is_file()
    assert "0 errors" in capsys.readouterr().out
    assert command(data=str(dataset), overrides=[cache, f"data.root={flawed.root}"], out=str(tmp_path / "b")) == 1
    assert command(data=str(dataset), overrides=["checks.box_tolerence=2"], out=str(tmp_path / "c")) == 2
    assert "checks.box_tolerence" in capsys.readouterr().err
    assert command(out=str(tmp_path / "d")) == 2
    (clean.root / "annotations.json").write_text("{")
    assert command(data=str(dataset), overrides=[cache], out=str(tmp_path / "e")) == 2
    assert json.loads((tmp_path / "e" / "report.json").read_text())["findings"][0]["code"] == "file.unparseable"


def test_every_code_is_documented():
    from cvtrain.curation import CODES

    text = (Path(__file__).resolve().parents[1] / "docs" / "curation.md").read_text()
    assert [code for code in CODES if f"| `{code}` |" not in text] == []


def test_report_json_is_strict_json_when_statistics_are_not_finite(tmp_path, checks):
    """A NaN box (valid for Python's json, not for JSON) must not put NaN into report.json: readers in other
    languages refuse it. Non-finite statistics are written as null."""
    root = tmp_path / "set"
    data = clean_coco(root)
    add_box(data, 1, 1, [4, 4, float("nan"), 10], segmentation=None)
    report = check_dataset(write(root, data), checks, progress=False)
    text = report.write(tmp_path / "out").joinpath("report.json").read_text()

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    saved = json.loads(text, parse_constant=refuse)
    assert saved["summary"]["errors"] >= 1
