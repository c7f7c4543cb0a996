"""Property-based tests (Hypothesis) of the dataset readers and the spec loader (issue 18).

The property: any generated input either loads, or raises cvtrain's own error (a ``CvtrainError``: one line,
printable, that names the file), never another exception. The inputs start from a small valid document and
mutate it: fields deleted, retyped or replaced by odd values that are valid JSON/XML/YAML but out of the range
the code expects (huge and negative numbers, NaN and infinities, booleans, nested lists, NUL bytes, surrogates).

The generated datasets go through the same entry points ``cvtrain check`` and ``fit`` use (``build_index`` over
the format registry, then the curation checks with image decoding off).

Every example runs with ``derandomize=True``: the same inputs on every run, so CI is deterministic.
``CVTRAIN_FUZZ_EXPLORE=<factor>`` runs random inputs, ``factor`` times as many, to hunt for new crashes.
Each crash these tests found also has a plain regression test at the end of the file.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cvtrain.config import load_config
from cvtrain.config.load import load_data_description
from cvtrain.config.schema import ChecksConfig, DataConfig
from cvtrain.curation.runner import run_checks
from cvtrain.data.files import inside_root
from cvtrain.data.loading import build_index
from cvtrain.errors import ConfigError, CvtrainError, DataError

EXPLORE = float(os.environ.get("CVTRAIN_FUZZ_EXPLORE", "0") or 0)
CHECKS = ChecksConfig(decode_images=False, use_cache=False, workers=1)


def fuzz(examples: int, **extra: Any):
    """Hypothesis settings: ``examples`` fixed inputs (more, and random, under ``CVTRAIN_FUZZ_EXPLORE``)."""
    return settings(max_examples=int(examples * EXPLORE) if EXPLORE else examples, deadline=None,
                    derandomize=not EXPLORE, database=None, **extra)


# ------------------------------------------------------------------ the property
def assert_readable(error: CvtrainError, *where: str) -> None:
    """A cvtrain error is one printable line, names the file, prints no huge number and no Python type name."""
    text = str(error)
    assert "\n" not in text, text
    text.encode("utf-8")  # a lone surrogate would break the CLI's print
    assert not re.search(r"\d{40,}", text), f"a huge number printed in full: {text[:300]}"
    assert "NoneType" not in text, text
    assert len(text) < 1500, text[:300]
    if where:
        assert any(w in text for w in where), f"{text!r} does not name {where}"


@contextmanager
def loads_or_refuses(*where: str):
    """The block either runs, or raises a ``CvtrainError`` that passes ``assert_readable``."""
    try:
        yield
    except CvtrainError as error:
        assert_readable(error, *where)


def check_everything(data: DataConfig, *where: str) -> None:
    """``build_index`` (fit and check) then the curation checks and the report, as ``cvtrain check`` runs them.

    numpy's RuntimeWarnings are errors here: ``cvtrain check`` would print them besides its report.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _check_everything(data, *where)


def _check_everything(data: DataConfig, *where: str) -> None:
    try:
        index = build_index(data)
    except CvtrainError as error:
        assert_readable(error, *where)
        if isinstance(error, DataError):
            report = run_checks(None, CHECKS, parse_error=error, progress=False)
            report.error_lines()
            report.to_json()
        return
    index.fingerprint()
    index.summary()
    report = run_checks(index, CHECKS, image_size=512, progress=False)
    report.summary_table()
    report.error_lines()
    for finding in report.findings:  # numbers the checks print (names they quote, digits or not, are the user's)
        unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", finding.message)
        assert not re.search(r"\d{40,}", unquoted), f"a huge number printed in full: {finding.message[:300]}"
    report.to_json()


@pytest.fixture(scope="module")
def scratch():
    """One folder for the module; every example gets a fresh subfolder (Hypothesis does not reset fixtures)."""
    folder = Path(tempfile.mkdtemp(prefix="cvtrain-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def fresh(scratch: Path) -> Path:
    """A new empty folder below ``scratch``."""
    return Path(tempfile.mkdtemp(dir=scratch))


# ------------------------------------------------------------------ odd values
class Raw(str):
    """JSON text written as it is (``1e309``, ``-0``, a 5000-digit integer): what ``json.dumps`` cannot write."""


def to_json(value: Any) -> str:
    """``json.dumps``, with ``Raw`` values written verbatim (NaN and Infinity as Python writes them)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


ODD_NUMBERS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, -(10**400),
               0.5, -0.0, 1e-300, 1e300, -1e300, 640.0, math.nan, math.inf, -math.inf]
RAW_NUMBERS = ["1e309", "-1e309", "1E400", "-0", "1e-400", "5e-324", "123456789" * 50, "-" + "9" * 5000, "1" * 4301,
               "0.1e1", "1" + "0" * 400 + ".0"]
ODD_TEXTS = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "é", "日本", "\u202e", "NaN", "1e309", "../x", "/abs",
             "a/", ".", "\\", "a" * 300, "None", "null", "true"]

odd_number = st.one_of(st.sampled_from(ODD_NUMBERS), st.sampled_from(RAW_NUMBERS).map(Raw), st.integers(),
                       st.floats(allow_nan=True, allow_infinity=True), st.booleans())
odd_text = st.one_of(st.sampled_from(ODD_TEXTS), st.text(max_size=6))
odd_scalar = st.one_of(st.none(), odd_number, odd_text)
odd_value = st.recursive(odd_scalar, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                             st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                         max_leaves=8)


def paths_of(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and list positions) into ``tree``, the root included."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += paths_of(value, prefix + (key,))
    elif isinstance(tree, list):
        for position, value in enumerate(tree):
            found += paths_of(value, prefix + (position,))
    return found


def mutate(tree: Any, path: tuple, action: str, value: Any) -> Any:
    """``tree`` with the node at ``path`` replaced, deleted, duplicated or wrapped in a list."""
    if not path:
        return value if action in ("replace", "delete") else [tree]
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "wrap":
        parent[last] = [parent[last]]
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(last, json.loads(json.dumps(parent[last])))
    elif action == "duplicate":
        parent[last] = value if not isinstance(parent[last], list) else parent[last] * 2
    return tree


def leaf_value(draw, old: Any) -> Any:
    """An odd value of the same kind as ``old`` (a number for a number, a text for a text): likely still to load."""
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        return draw(odd_number)
    if isinstance(old, str):
        return draw(odd_text)
    return draw(odd_value)


@st.composite
def mutated(draw, base: Any, most: int = 3) -> Any:
    """``base`` (deep-copied) with 1..``most`` mutations at drawn paths.

    Most mutations change one leaf to an odd value of its own kind (so the document often still loads and the
    checks run on it); the rest replace, delete, wrap or duplicate any node, the root included.
    """
    tree = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, most))):
        paths = paths_of(tree)
        if draw(st.integers(0, 9)) < 6:
            leaves = [p for p in paths if p and not isinstance(node_at(tree, p), (dict, list))]
            if leaves:
                path = draw(st.sampled_from(leaves))
                tree = mutate(tree, path, "replace", leaf_value(draw, node_at(tree, path)))
                continue
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "duplicate"]))
        tree = mutate(tree, path, action, draw(odd_value))
    return tree


def node_at(tree: Any, path: tuple) -> Any:
    """The node of ``tree`` at ``path``."""
    for step in path:
        tree = tree[step]
    return tree


# -------------------------------------------------------------------------- COCO
COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
               {"id": 2, "file_name": "sub/b.png", "width": 32, "height": 32}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": [[2, 3, 22, 3, 22, 13, 2, 13]]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1,
         "segmentation": {"size": [32, 32], "counts": [0, 4, 28, 4, 28, 4, 28, 4, 924]}},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10.5, 10, 5, 6.25], "area": 31.25, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog"}],
}


def coco_data(root: Path, text: str | bytes) -> DataConfig:
    """A COCO dataset at ``root`` whose annotation file holds ``text``."""
    (root / "images").mkdir(exist_ok=True)
    (root / "annotations.json").write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    return DataConfig(format="coco", root=root, annotations="annotations.json", images="images")


def test_the_coco_base_document_loads(scratch):
    index = build_index(coco_data(fresh(scratch), to_json(COCO)))
    assert len(index.images) == 2 and len(index.annotations) == 3


@fuzz(1000)
@given(document=mutated(COCO))
def test_coco_documents_load_or_raise_a_cvtrain_error(document, scratch):
    root = fresh(scratch)
    check_everything(coco_data(root, to_json(document)), "annotations.json")


@fuzz(150)
@given(document=mutated(COCO, most=1), cut=st.integers(0, 400))
def test_coco_text_cut_short_or_spliced_loads_or_raises(document, cut, scratch):
    text = to_json(document)
    root = fresh(scratch)
    check_everything(coco_data(root, text[:cut] + text[cut * 2:]), "annotations.json")


# ------------------------------------------------------- regression tests (COCO)
def coco_refusal(root: Path, document: Any) -> str:
    """The one-line error of reading ``document`` as a COCO file (fails when it loads)."""
    with pytest.raises(DataError) as error:
        build_index(coco_data(root, to_json(document)))
    assert_readable(error.value, "annotations.json")
    return str(error.value)


def coco_with(path: tuple, value: Any) -> dict:
    """The base COCO document with the value at ``path`` replaced."""
    return mutate(json.loads(json.dumps(COCO)), path, "replace", value)


@pytest.mark.parametrize(("path", "value", "fragment"), [
    # ValueError (int() refuses more than 4300 digits) before
    (("annotations", 0, "category_id"), Raw("7" * 5000),
     "annotations[0] (id 1): 'category_id' is 1e+4999 (more than 64 bits), expected an integer"),
    # OverflowError (float() of a 400-digit integer) before, in the reader or in the checks
    (("images", 0, "width"), 10**400,
     "image id 1: 'width' is 1e+400 (more than 64 bits), expected a size in pixels (0 or more)"),
    (("images", 1, "height"), 1e300, "image id 2: 'height' is 1e+300, expected a size in pixels (0 or more)"),
    (("annotations", 2, "bbox", 0), 10**400, "annotation id 3: 'bbox' is [1e+400, 10, 5, 6.25], expected [x, y,"),
    (("annotations", 2, "area"), -(10**400), "annotation id 3: 'area' is -1e+400, expected a number"),
    (("categories", 1, "id"), 2**63, "categories[1] needs an integer 'id', not 9223372036854775808 (more than 64"),
    (("images", 0, "id"), "1", "images[0] needs an integer 'id', not '1'"),
    # the value was printed in full (a 400-digit number, a long nested list)
    (("annotations", 0, "iscrowd"), 10**400, "annotation id 1: 'iscrowd' is 1e+400, expected 0 or 1"),
    (("annotations", 0, "bbox"), [[1, 2, 3, 4, 5, 6, 7, 8]] * 20, "'bbox' is [[1, 2, 3, 4, 5, 6, ...], [1, 2, 3, 4,"),
    # "NoneType" before
    ((), None, "top level is null, expected an object with 'images' and 'categories'"),
    (("images",), None, "'images' is null, expected a list"),
    (("categories", 0), [1], "categories[0] needs an integer 'id', and is an array, not an object"),
    # TypeError inside pycocotools before (an RLE without a box, whose size is not [height, width])
    (("annotations", 1, "bbox"), None, None),
], ids=["5000-digit-id", "400-digit-width", "1e300-height", "400-digit-bbox", "400-digit-area", "2**63-category-id",
        "string-id", "400-digit-iscrowd", "long-bbox", "null-top-level", "null-images", "list-category",
        "rle-without-bbox"])
def test_coco_values_out_of_range_are_refused_in_one_line(path, value, fragment, tmp_path):
    document = coco_with(path, value)
    if fragment is None:  # the RLE case: no bbox, and a size pycocotools cannot take
        document["annotations"][1]["segmentation"]["size"] = ["32", 32]
        fragment = "annotation id 2: no 'bbox', and its RLE 'segmentation' (size ['32', 32]) cannot be decoded"
    assert fragment in coco_refusal(tmp_path, document)


def test_coco_polygon_coordinate_past_float_range_is_an_invalid_segmentation(tmp_path):
    """OverflowError in ``polygon_columns`` before; now the polygon is reported by the checks."""
    document = coco_with(("annotations", 0, "segmentation", 0, 1), 10**400)
    index = build_index(coco_data(tmp_path, to_json(document)))
    report = run_checks(index, CHECKS, progress=False)
    assert [f.annotation_id for f in report.by_code("segmentation.invalid")] == [1]


def test_coco_ids_and_sizes_past_int64_in_a_file_msgspec_reads_are_refused(tmp_path):
    """msgspec decodes integers of any size: 2**64 as a width reached the checks (OverflowError in numpy) before."""
    document = coco_with(("images", 0, "width"), 2**64)
    assert "image id 1: 'width' is 18446744073709551616 (more than 64 bits)" in coco_refusal(tmp_path, document)


def test_a_file_name_with_a_lone_surrogate_is_refused(tmp_path):
    """UnicodeEncodeError (in the fingerprint, and where the file is opened) before: the COCO reader refuses the
    name in one line, and the path guard refuses such a name from any other reader."""
    document = coco_with(("images", 0, "file_name"), "a\ud800.jpg")
    with pytest.raises(DataError) as error:
        build_index(coco_data(tmp_path, to_json(document)))
    assert "image id 1: 'file_name' 'a\\ud800.jpg' is not valid Unicode (it holds a lone surrogate)" in str(error.value)
    with pytest.raises(DataError) as error:
        inside_root(tmp_path, "images/a\ud800.jpg")
    assert "image path 'images/a\\ud800.jpg' is not valid Unicode (it holds a lone surrogate)" in str(error.value)


def test_checks_print_no_numpy_warnings_on_zero_and_infinite_sizes(tmp_path):
    """Zero heights, tiny and infinite box sides: numpy warned (divide by zero, overflow) while checking before."""
    document = coco_with(("images", 0, "height"), 0)
    document["annotations"][2]["bbox"][3] = Raw("5e-324")
    document["annotations"][0]["segmentation"][0][3] = Raw("1e309")
    index = build_index(coco_data(tmp_path, to_json(document)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run_checks(index, CHECKS, image_size=512, progress=False)


# --------------------------------------------------------------------------- VOC
VOC = """<annotation>
  <folder>VOC2012</folder>
  <filename>a.jpg</filename>
  <size><width>64</width><height>48</height><depth>3</depth></size>
  <object>
    <name>cat</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>12</ymax></bndbox>
  </object>
  <object>
    <name>dog</name><difficult>1</difficult>
    <bndbox><xmin>10.5</xmin><ymin>4</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>
  </object>
</annotation>"""
VOC_TEXTS = ["", " ", "abc", "1e309", "-1e309", "1" * 5000, "-5", "0", "0.0", "-0", "nan", "NaN", "inf", "-Infinity",
             "1_000", "0x10", " 12 ", "12px", "١٢", "1e-400", "9" * 30, "é", "日本", "\u202e", "a" * 300, "../x.jpg",
             "/abs.jpg", "a\x00b", "\ud800"]


@st.composite
def voc_documents(draw) -> bytes:
    """The VOC base file with 1..3 elements retyped (odd text), removed, emptied or duplicated."""
    import copy
    import xml.etree.ElementTree as ET

    root = ET.fromstring(VOC)
    for _ in range(draw(st.integers(1, 3))):
        parents = {child: parent for parent in root.iter() for child in parent}
        element = draw(st.sampled_from(list(parents)))
        action = draw(st.sampled_from(["text", "text", "text", "remove", "empty", "duplicate"]))
        if action == "text":
            element.text = draw(st.one_of(st.sampled_from(VOC_TEXTS), st.text(max_size=8)))
        elif action == "remove":
            parents[element].remove(element)
        elif action == "empty":
            element.text = None
            for child in list(element):
                element.remove(child)
        else:
            parents[element].append(copy.deepcopy(element))
    if draw(st.integers(0, 19)) == 0:
        root.tag = draw(st.sampled_from(["annotations", "Annotation", "a"]))
    # NUL bytes and lone surrogates go into the file as they are: not XML, or not UTF-8
    return ET.tostring(root, encoding="unicode").encode("utf-8", "surrogatepass")


def voc_data(root: Path, files: dict[str, bytes]) -> DataConfig:
    """A VOC dataset at ``root`` whose Annotations folder holds ``files``."""
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    for name, data in files.items():
        (root / "Annotations" / name).write_bytes(data)
    return DataConfig(format="voc", root=root)


def test_the_voc_base_file_loads(scratch):
    index = build_index(voc_data(fresh(scratch), {"a.xml": VOC.encode()}))
    assert index.class_names == ["cat", "dog"] and len(index.annotations) == 2


@fuzz(600)
@given(document=voc_documents())
def test_voc_files_load_or_raise_a_cvtrain_error(document, scratch):
    root = fresh(scratch)
    check_everything(voc_data(root, {"a.xml": document, "b.xml": VOC.encode()}), "a.xml")


# -------------------------------------------------------- regression tests (VOC)
def voc_with(tag: str, text: str) -> bytes:
    """The base VOC file with the first ``<tag>``'s text replaced."""
    return re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{text}</{tag}>", VOC, count=1).encode()


@pytest.mark.parametrize(("tag", "text", "fragment"), [
    ("width", "1e309", "a.xml: size is '1e309' x '48', expected integers"),  # OverflowError before (int(inf))
    ("height", "-Infinity", "a.xml: size is '64' x '-Infinity', expected integers"),  # OverflowError before
    ("width", "1" * 5000, "a.xml: size is '111111111111111111111111111...1111111111111111111111111111' x '48'"),
    ("width", "1e30", "a.xml: size is '1e30' x '48', expected integers"),  # a 31-digit width before
    ("width", "nan", "a.xml: size is 'nan' x '48', expected integers"),
    ("xmin", "x" * 300, "a.xml: bndbox/xmin is 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx', expected"),
], ids=["1e309-width", "-inf-height", "5000-digit-width", "1e30-width", "nan-width", "long-xmin"])
def test_voc_values_out_of_range_are_refused_in_one_line(tag, text, fragment, tmp_path):
    with pytest.raises(DataError) as error:
        build_index(voc_data(tmp_path, {"a.xml": voc_with(tag, text)}))
    assert_readable(error.value, "a.xml")
    assert fragment in str(error.value)


def test_check_messages_abbreviate_huge_coordinates(tmp_path):
    """``box.outside_image`` printed a 260-digit distance for a box 5e259 px wide before."""
    document = coco_with(("annotations", 0, "bbox", 2), 5.089918553341443e+259)
    report = run_checks(build_index(coco_data(tmp_path, to_json(document))), CHECKS, progress=False)
    [finding] = report.by_code("box.outside_image")
    assert "box [2, 3, 5.08992e+259, 10] reaches 5.09e+259 px past the 64x48 image" == finding.message


# ------------------------------------------------------------------------- masks
MASK_CLASSES = ["background", "road", "car"]
PALETTE = {0: [0, 0, 0], 1: [128, 64, 128], 2: [0, 0, 142]}
MASK_MODES = ["L", "P", "I;16", "I", "F", "RGB", "RGBA", "1", "LA", "broken"]


@st.composite
def mask_files(draw) -> tuple[bytes, str, tuple[int, int]]:
    """``(file bytes, suffix, image size)``: a mask of a drawn mode, size and values, or a broken file."""
    import io

    mode = draw(st.sampled_from(MASK_MODES))
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    image_size = (width, height) if draw(st.integers(0, 4)) else (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    if mode == "broken":
        data = draw(st.sampled_from([b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20]))
        return data, ".png", image_size
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = draw(st.sampled_from(["classes", "ignore", "wide", "extreme"]))
    if mode in ("RGB", "RGBA", "LA"):
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}[mode]
        if values == "classes":
            colours = np.array([PALETTE[k] + [255] for k in range(3)], np.uint8)[:, :channels]
            array = colours[rng.integers(0, 3, (height, width))]
        else:
            array = rng.integers(0, 256, (height, width, channels)).astype(np.uint8)
        image = Image.fromarray(array, mode)
    else:
        low, high = {"classes": (0, 3), "ignore": (0, 4), "wide": (0, 300),
                     "extreme": {"I": (-(2**31), 2**31 - 1), "I;16": (0, 65535)}.get(mode, (0, 255))}[values]
        array = rng.integers(low, high, (height, width), dtype=np.int64, endpoint=values == "extreme")
        if values == "ignore":
            array[array == 3] = 255
        if mode == "1":
            image = Image.fromarray(array.astype(bool))
        elif mode == "F":
            floats = array.astype(np.float32)
            if values == "extreme":
                floats.ravel()[: 3] = [np.nan, np.inf, -1.5][: floats.size]
            image = Image.fromarray(floats, "F")
        elif mode in ("I", "I;16"):
            image = Image.fromarray(array.astype(np.int32 if mode == "I" else np.uint16))
        else:
            image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
            if mode == "P":
                image = image.convert("P")
                image.putpalette([v for k in range(256) for v in PALETTE.get(k, [k, k, k])])
    out = io.BytesIO()
    suffix = ".tif" if mode in ("I", "F") else ".png"  # PNG holds neither 32-bit integers nor floats
    image.save(out, format="TIFF" if suffix == ".tif" else "PNG")
    return out.getvalue(), suffix, image_size


def masks_data(root: Path, mask: bytes, suffix: str, image_size: tuple[int, int], *, palette: bool,
               ignore_index: int | None) -> DataConfig:
    """A ``format: masks`` dataset at ``root``: one image with the given mask, one with a valid mask."""
    for folder in ("images", "masks"):
        (root / folder).mkdir()
    Image.new("RGB", image_size, (10, 20, 30)).save(root / "images" / "a.png")
    Image.new("RGB", (4, 3)).save(root / "images" / "b.jpg")
    (root / "masks" / f"a{suffix}").write_bytes(mask)
    Image.new("L", (4, 3), 1).save(root / "masks" / "b.png")
    return DataConfig(format="masks", root=root, classes=MASK_CLASSES, ignore_index=ignore_index,
                      palette=PALETTE if palette else None, val_fraction=0.0)


MASK_CHECKS = ChecksConfig(decode_images=True, use_cache=False, workers=1)  # mask values are read when decoding


def read_every_mask(data: DataConfig) -> None:
    """The training path: every item of the ``SegmentationDataset``, then the class pixel statistics."""
    from cvtrain.data.segmentation import SegmentationDataset, class_pixel_statistics

    try:
        index = build_index(data)
    except CvtrainError as error:
        assert_readable(error)
        return
    dataset = SegmentationDataset(index, palette=data.palette)
    for position in range(len(dataset)):
        with loads_or_refuses(index.images[position].mask_file or ""):
            dataset[position]
    with loads_or_refuses():
        class_pixel_statistics(index, data.palette)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = run_checks(index, MASK_CHECKS, progress=False)
    report.error_lines()
    report.to_json()


def test_a_valid_mask_loads(scratch):
    root = fresh(scratch)
    mask = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    import io

    out = io.BytesIO()
    Image.fromarray(mask, "L").save(out, format="PNG")
    index = build_index(masks_data(root, out.getvalue(), ".png", (3, 2), palette=False, ignore_index=None))
    assert len(index.images) == 2
    read_every_mask(masks_data(fresh(scratch), out.getvalue(), ".png", (3, 2), palette=False, ignore_index=None))


@fuzz(250)
@given(mask=mask_files(), palette=st.booleans(), ignore_index=st.sampled_from([None, 255, 3, 65535]))
def test_masks_load_or_raise_a_cvtrain_error(mask, palette, ignore_index, scratch):
    data, suffix, image_size = mask
    read_every_mask(masks_data(fresh(scratch), data, suffix, image_size, palette=palette, ignore_index=ignore_index))


# ------------------------------------------------------ regression tests (masks)
def test_a_32_bit_mask_with_a_huge_value_is_refused_without_allocating_its_range(tmp_path):
    """np.bincount over a value near 2**31 allocated 16 GiB of counters before (MemoryError, or the OOM killer),
    in training's read_mask and in the checks' mask decoding."""
    import io

    from cvtrain.data.segmentation import SegmentationDataset

    array = np.array([[0, 1, 2**31 - 1], [2, -0, 1]], np.int32)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="TIFF")
    data = masks_data(tmp_path, out.getvalue(), ".tif", (3, 2), palette=False, ignore_index=None)
    index = build_index(data)
    with pytest.raises(DataError) as error:
        SegmentationDataset(index)[0]
    assert "a.tif: mask values 2147483647 (1 px) are neither classes 0..2 nor ignore_index None" in str(error.value)
    report = run_checks(index, MASK_CHECKS, progress=False)
    [finding] = report.by_code("mask.unknown_value")
    assert finding.message.startswith("mask values 2147483647 (1 px) are not declared classes [0, 1, 2]")


# ------------------------------------------------------------------- spec loader
SPEC = {
    "task": "detection",
    "data": {"format": "coco", "root": "data", "annotations": "train.json", "classes": ["cat", "dog"],
             "splits": {"val": {"annotations": "val.json", "list": "val.txt"}}, "val_fraction": 0.2,
             "palette": {0: [0, 0, 0], 1: [255, 0, 0]}, "options": {"image_suffix": "_x"}},
    "model": {"name": "fasterrcnn_mobilenet_v3_large_fpn", "weights": "DEFAULT", "trainable_backbone_layers": 3},
    "train": {"max_epochs": 2, "batch_size": 4, "image_size": 320,
              "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
              "scheduler": {"name": "multistep", "milestones": [0.6, 0.8], "gamma": 0.1}},
    "augment": {"hflip": 0.5, "scale": [0.75, 1.25]},
    "checks": {"severity_overrides": {"box.tiny_at_input_size": "off"}, "min_image_side": 8},
    "tests": {"flip": {"min_agreement": 0.9}, "brightness": {"factors": [0.8, 1.2]}},
}
YAML_SNIPPETS = ["~", "null", "yes", "off", ".nan", "-.inf", ".Inf", "1" * 5000, "-" + "9" * 400, "1e309", "0x_1F",
                 "0o777", "1_000", "0b101", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "!!binary aGVsbG8=",
                 "!!set {a, b}", "!!str 12", "!!int '7'", "!!float '1e400'", "!!python/object:os.system ls",
                 "!!python/name:os.system", "!custom x", "*undefined", "&a [*a]", "[1, [2, [3, [4]]]]",
                 "{a: {b: {c: d}}}", "'\\0'", '"\\ud800"', '"\\x00"', '"\\U0010FFFF"', "|\n  text", "[", "{a: 1, a: 2}",
                 "'" + "a" * 300 + "'", "=", "..", "a.b", "[]", "{}"]
YAML_KEYS = ["1", "null", "~", "true", "1.5", ".nan", "[1, 2]", "{a: b}", "''", "'a.b'", "'\\u00e9'", "<<",
             "'" + "k" * 200 + "'"]


def to_yaml(value: Any) -> str:
    """Flow-style YAML (JSON is YAML); ``Raw`` values and keys written verbatim."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_yaml(k) if isinstance(k, Raw) else json.dumps(str(k))}: {to_yaml(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_yaml(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[str(value)]
    return json.dumps(value)


yaml_value = st.one_of(odd_value, st.sampled_from(YAML_SNIPPETS).map(Raw))
python_key = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.booleans(), st.floats(allow_nan=True),
                       st.tuples(st.integers()), st.sampled_from(["", ".", "a.b", "\x00", "\ud800"]))


@st.composite
def spec_trees(draw, raw_keys: bool) -> dict:
    """The base spec with 1..4 mutations: odd values (YAML snippets when ``raw_keys``), odd keys added or renamed."""
    tree = json.loads(json.dumps(SPEC))
    tree["data"]["palette"] = {0: [0, 0, 0], 1: [255, 0, 0]}  # int keys, as YAML gives them
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in paths_of(tree) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "wrap", "key"]))
        if action == "key":
            parent = node_at(tree, path[:-1])
            if isinstance(parent, dict):
                key = draw(st.sampled_from(YAML_KEYS).map(Raw) if raw_keys else python_key)
                parent[key] = parent.pop(path[-1])
            continue
        value = draw(yaml_value if raw_keys else odd_value)
        tree = mutate(tree, path, action, value)
    return tree


def test_the_base_spec_loads():
    assert load_config(SPEC).model.name == SPEC["model"]["name"]


@fuzz(500)
@given(tree=spec_trees(raw_keys=False))
def test_spec_dicts_give_a_config_or_a_config_error(tree):
    with loads_or_refuses():
        load_config(tree)


@fuzz(400)
@given(tree=spec_trees(raw_keys=True))
def test_spec_files_give_a_config_or_a_config_error(tree, scratch):
    path = fresh(scratch) / "spec.yaml"
    path.write_bytes(to_yaml(tree).encode("utf-8", "surrogatepass"))
    with loads_or_refuses("spec.yaml"):
        load_config(path)
    data = path.with_name("data.yaml")
    data.write_bytes(to_yaml(tree.get("data", tree)).encode("utf-8", "surrogatepass"))
    with loads_or_refuses("data.yaml"):
        load_data_description(data)


OVERRIDE_KEYS = ["train.lr", "train.optimizer.lr", "data.classes", "data.palette.0", "data.splits.val.list", "model",
                 "model.name.x", "checks.severity_overrides.x", "data.root", "train..lr", ".", "train.", "=", "a" * 200,
                 "data.options.k", "train.max_epochs", "tests.flip", "name", "run_dir", "sweep.x"]
override_key = st.one_of(st.sampled_from(OVERRIDE_KEYS), st.text(max_size=12))
override_value = st.one_of(st.sampled_from(YAML_SNIPPETS), st.text(max_size=12),
                           odd_value.map(to_yaml))


@fuzz(500)
@given(overrides=st.lists(st.tuples(override_key, st.sampled_from(["=", " = ", "", "=="]), override_value),
                          min_size=1, max_size=3))
def test_overrides_give_a_config_or_a_config_error(overrides):
    texts = [key + sep + value for key, sep, value in overrides]
    with loads_or_refuses():
        load_config(SPEC, texts)


# ---------------------------------------------------- regression tests (spec loader)
def spec_text(**replaced: str) -> str:
    """The base spec as block YAML, with ``section.key: <raw YAML>`` lines replaced or added."""
    import yaml

    lines = yaml.safe_dump(SPEC, sort_keys=False).splitlines()
    for dotted, raw in replaced.items():
        section, key = dotted.split("__")
        start = lines.index(f"{section}:")
        lines.insert(start + 1, f"  {key}: {raw}")
        lines = [line for position, line in enumerate(lines)
                 if not (position > start + 1 and line.startswith(f"  {key}:") and position < start + 40)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("replaced", "fragment"), [
    # ValueError (int() refuses more than 4300 digits) before
    ({"train__max_epochs": "1" * 5000},
     "spec.yaml:30:15: invalid YAML: '111111111111111111111111111...1111111111111111111111111111' is not a valid int "
     "(more than 4300 digits)"),
    # ValueError, KeyError, AttributeError from PyYAML's constructors before
    ({"data__split_seed": "2024-13-45"},
     "spec.yaml:3:15: invalid YAML: '2024-13-45' is not a valid timestamp (month must be in 1..12)"),
    ({"train__max_epochs": "!!bool maybe"}, "spec.yaml:30:15: invalid YAML: 'maybe' is not a valid bool (not in its"),
    ({"train__max_epochs": "!!timestamp soon"}, "spec.yaml:30:15: invalid YAML: 'soon' is not a valid timestamp"),
    ({"train__max_epochs": "!!int 0x"}, "spec.yaml:30:15: invalid YAML: '0x' is not a valid int (not in its format)"),
    # "refused YAML tag: found unhashable key" before
    ({"data__options": "{[1, 2]: x}"}, "invalid YAML: found unhashable key"),
    # ValueError (embedded null byte) from Path.resolve before
    ({"data__root": '"a\\0b"'}, "spec.yaml: data.root 'a\\x00b' is not a path (it holds a NUL byte or a lone surr"),
    # printed in full before: 401 digits, a 5000-character name
    ({"model__trainable_backbone_layers": "-" + "9" * 400},
     "spec.yaml:26: 'model.trainable_backbone_layers' = -1e+400: Input should be greater than or equal to 0"),
    ({"model__name": "m" * 5000}, "'model.name' = 'mmmmmmmmmmmmmmmmmmmmmmmmmmm...mmmmmmmmmmmmmmmmmmmmmmmmmmmm': "
                                  "unknown model 'mmmmmmmmmmmmmmmmmmmmmmmmmmm...mmmmmmmmmmmmmmmmmmmmmmmmmmmm'"),
], ids=["5000-digit-int", "month-13", "bool-maybe", "timestamp-soon", "int-0x", "unhashable-key", "nul-root",
        "400-digit-layers", "long-model-name"])
def test_spec_values_out_of_range_are_refused_in_one_line(replaced, fragment, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(**replaced), encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_readable(error.value, "spec.yaml")
    assert fragment in str(error.value)


@pytest.mark.parametrize(("override", "fragment"), [
    ("function-=1", "override 'function-=1': unknown key 'function-'"),  # IndexError in explain before
    ("data.root=a\x00b", "override 'data.root=a\\x00b': data.root 'a\\x00b' is not a path"),  # ValueError before
    ("train.max_epochs=" + "1" * 5000,  # ValueError (4300 digits) before; now the text, as any non-YAML value
     "'train.max_epochs' = '111111111111111111111111111...1111111111111111111111111111': Unable to parse input"),
    ("a\nb=1", "unknown key 'a\\nb'"),  # the newline was printed as it is (two lines) before
    ("x" * 300, "override 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx' is not key=value"),
], ids=["function-key", "nul-root", "5000-digit-value", "newline-key", "long-override"])
def test_odd_overrides_are_refused_in_one_line(override, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(SPEC, [override])
    assert_readable(error.value)
    assert fragment in str(error.value)


def test_yolo_data_yaml_with_an_impossible_date_is_a_data_error(tmp_path):
    """The YOLO reader's data.yaml goes through the same loader (ValueError from PyYAML before)."""
    from cvtrain.data.formats.textfiles import read_yaml_with_lines

    path = tmp_path / "data.yaml"
    path.write_text("path: .\ntrain: images\nnames: {0: 2024-02-30}\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_yaml_with_lines(path)
    assert "data.yaml:3:12: invalid YAML: '2024-02-30' is not a valid timestamp (day is out of range for month)" in \
        str(error.value)
