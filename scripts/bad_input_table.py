"""Runs the malformed-input corpus (tests/data/bad) and tables how cvtrain answers each case.

    python scripts/bad_input_table.py                       # this checkout: the table on stdout
    python scripts/bad_input_table.py --json after.json --write docs/reliability.md
    git worktree add /tmp/before e5b247e
    python scripts/bad_input_table.py --checkout /tmp/before --json before.json   # the same cases, older code
    python scripts/bad_input_table.py --json after.json --before before.json --write docs/reliability.md

Each case is run as tests/test_bad_inputs.py runs it (``tests/corpus.py``) and answered one of:
refused (exit 2, one line, no traceback), reported (``cvtrain check`` names the case's finding code),
accepted (odd but valid input, checked without a traceback), silent (went through unremarked) or crashed
(a traceback or an unexpected exit code). ``--checkout`` runs the cases of this checkout against the cvtrain
of another one (an older commit, for a before/after table). ``--write`` replaces the part of the file
between ``<!-- bad-input-table:start -->`` and ``<!-- bad-input-table:end -->``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import ANSWERS, CliForkServer, child_environment, make_checkpoints, manifest, run_case  # noqa: E402

START, END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"
EXPECTED = {"error": "refused", "finding": "reported", "accepted": "accepted"}


def run_all(checkout: Path | None, only: str | None) -> dict[str, dict]:
    """Every case's answer and summary line, run against ``checkout``'s cvtrain (this one when None)."""
    env = child_environment()
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
        sys.path.insert(0, str(checkout))  # the checkpoints too are made by that cvtrain
    cases = {k: v for k, v in manifest().items() if not only or only in k}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cvtrain-corpus-") as scratch:
        scratch = Path(scratch)
        checkpoints = make_checkpoints(scratch / "checkpoints")
        (scratch / "output").mkdir()
        server = CliForkServer(scratch / "output", env=env)
        started = time.perf_counter()
        try:
            for number, (case, entry) in enumerate(sorted(cases.items()), start=1):
                work = scratch / f"case-{number}"
                work.mkdir()
                outcome = run_case(case, entry, server, checkpoints, work)
                summary = outcome.summary.replace(str(work / "corpus") + "/", "").replace(str(work) + "/", "")
                results[case] = {"answer": outcome.answer, "expected": EXPECTED[entry.get("answer", "error")],
                                 "exit": outcome.done.returncode, "line": summary,
                                 "corpus_changed": outcome.corpus_changed}
                print(f"[{number}/{len(cases)} {time.perf_counter() - started:.0f} s] {case}: {outcome.answer}",
                      file=sys.stderr, flush=True)
        finally:
            server.close()
    return results


def kind_of(case: str) -> str:
    """The corpus folder a case is in (``coco``, ``voc``, ...)."""
    return case.split("/", 1)[0]


def count_table(after: dict[str, dict], before: dict[str, dict] | None) -> list[str]:
    """Per input class: how many cases got each answer (``before -> after`` when a before run is given)."""
    kinds = sorted({kind_of(case) for case in after})
    header = "| input class | cases | " + " | ".join(ANSWERS) + " |"
    lines = [header, "|" + " --- |" * (len(ANSWERS) + 2)]
    for kind in [*kinds, "all"]:
        cases = [case for case in after if kind in ("all", kind_of(case))]
        now = Counter(after[case]["answer"] for case in cases)
        then = Counter(before[case]["answer"] for case in cases if case in before) if before else None
        cells = [(f"{then[a]} → {now[a]}" if then is not None else str(now[a])) for a in ANSWERS]
        name = "**all**" if kind == "all" else kind
        lines.append(f"| {name} | {len(cases)} | " + " | ".join(cells) + " |")
    return lines


def case_table(after: dict[str, dict], before: dict[str, dict] | None) -> list[str]:
    """One row per case: its answer (before and now), the expected answer when they differ, and the line it gave."""
    lines = ["| case | " + ("before | " if before else "") + "answer | what cvtrain says |",
             "| --- | " + ("--- | " if before else "") + "--- | --- |"]
    for case, result in sorted(after.items()):
        off = result["answer"] != result["expected"]
        answer = result["answer"] + (f" (expected {result['expected']})" if off else "")
        said = result["line"].replace("|", "\\|").replace("\n", " ")
        said = said if len(said) <= 220 else said[:217] + "..."
        was = f"{before[case]['answer']} | " if before and case in before else ("— | " if before else "")
        lines.append(f"| `{case}` | {was}{answer} | {said} |")
    return lines


def main() -> int:
    """Run the corpus, print the tables, optionally write them into a Markdown file; exit 1 if any case is off."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, help="run the cases against this checkout's cvtrain")
    parser.add_argument("--only", help="only the cases whose name contains this text")
    parser.add_argument("--json", type=Path, help="write every case's answer here")
    parser.add_argument("--before", type=Path, help="a --json file of an earlier run, shown beside this one")
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this Markdown file")
    args = parser.parse_args()
    after = run_all(args.checkout, args.only)
    before = json.loads(args.before.read_text()) if args.before else None
    if args.json:
        args.json.write_text(json.dumps(after, indent=1) + "\n", encoding="utf-8")
    text = "\n".join([f"{len(after)} cases" + (" (before → now)" if before else "") + ":", "",
                      *count_table(after, before), "", *case_table(after, before)])
    print(text)
    if args.write:
        document = args.write.read_text(encoding="utf-8")
        head, rest = document.split(START, 1)
        _, tail = rest.split(END, 1)
        command = "python scripts/bad_input_table.py" + (" --before before.json" if before else "") + \
                  f" --write {args.write.relative_to(REPO) if args.write.is_absolute() else args.write}"
        args.write.write_text(f"{head}{START}\n<!-- written by `{command}`; do not edit by hand -->\n\n{text}\n\n"
                              f"{END}{tail}", encoding="utf-8")
    off = [case for case, result in after.items() if result["answer"] != result["expected"]]
    if off:
        print(f"\n{len(off)} case(s) not answered as expected: {', '.join(off)}", file=sys.stderr)
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
