"""The malformed-input corpus (tests/data/bad): every case gets its answer through the CLI and changes nothing.

A refused case exits 2 with one line; a finding case is named by ``cvtrain check`` with its own code; an
accepted case (odd but valid names) is checked and rendered literally. ``tests/corpus.py`` runs the cases
(children forked from one process that imported cvtrain once); ``test_fork_server_answers_as_python_dash_m``
checks that this gives the same output as a fresh ``python -m cvtrain``.
"""
from __future__ import annotations

import html
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import CORPUS, KINDS, CliForkServer, child_environment, make_checkpoints, manifest, run_case

MANIFEST = manifest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = CliForkServer(tmp_path_factory.mktemp("cli-output"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A detection checkpoint (classes square, disc, triangle) and a segmentation one (background, shape)."""
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def test_every_corpus_entry_has_a_case_and_every_case_a_file():
    entries = {f"{kind}/{path.name}" for kind in KINDS for path in (CORPUS / kind).iterdir()
               if not path.name.startswith("_")}
    assert entries == set(MANIFEST)
    assert len(MANIFEST) >= 100


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_bad_input_gets_its_answer_and_writes_nothing(case, server, checkpoints, tmp_path):
    """A refused case: exit 2, one line naming where, what and how to fix, nothing written. A reported case:
    ``check`` names the case's finding code in report.json (written to --out only). An accepted case (odd but
    valid names): the report is written and shows every expected fragment literally, escaped in the HTML."""
    entry = MANIFEST[case]
    outcome = run_case(case, entry, server, checkpoints, tmp_path)
    done = outcome.done
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    expected = {"error": "refused", "finding": "reported", "accepted": "accepted"}[entry.get("answer", "error")]
    assert outcome.answer == expected, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert not outcome.corpus_changed
    assert not (tmp_path / "corpus" / "PWNED").exists()
    assert "object at 0x" not in outcome.summary  # no Python repr where a name belongs
    if expected == "refused":
        line = outcome.lines[0]
        assert line.endswith(")"), line  # "error: <where>: <what> (<hint>)"
        for fragment in entry["expect"]:
            assert fragment in line, (fragment, line)
        assert not outcome.out.exists()
        return
    assert sorted(path.name for path in outcome.out.iterdir()) == ["report.html", "report.json"]
    if expected == "reported":
        for fragment in entry["expect"]:
            assert fragment in outcome.summary, (fragment, outcome.summary)
    else:
        page = (outcome.out / "report.html").read_text(encoding="utf-8")
        for fragment in entry["expect"]:
            assert html.escape(fragment, quote=False) in page, fragment
            if "<" in fragment:
                assert fragment not in page  # never as markup


def test_fork_server_answers_as_python_dash_m(server, tmp_path):
    """A case through a fresh ``python -m cvtrain`` prints the same and exits the same as through the fork server."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    argv = MANIFEST["coco/syntax_error.json"]["run"]
    fresh = subprocess.run([sys.executable, "-m", "cvtrain", *argv], cwd=corpus, capture_output=True, text=True,
                           env=child_environment(), timeout=300)
    forked = server.run(argv, cwd=corpus)
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (forked.returncode, forked.stdout, forked.stderr)


def test_debug_flag_shows_the_traceback(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    argv = MANIFEST["coco/syntax_error.json"]["run"]
    done = subprocess.run([sys.executable, "-m", "cvtrain", *argv, "--debug"], cwd=corpus, capture_output=True,
                          text=True, env=child_environment(), timeout=300)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("cvtrain.errors.DataError: ")
