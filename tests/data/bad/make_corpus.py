"""Writes the malformed-input corpus next to this file (run once; the files are committed).

    python tests/data/bad/make_corpus.py

``cases.yaml`` says how each case is run and what its error must say; this
script only makes the files, most of them a few hundred bytes.
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
CLASSES = ["square", "disc", "triangle"]  # the tests' detection checkpoint is trained on these
MASK_CLASSES = ["background", "shape"]  # and the segmentation checkpoint on these


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def png(size: tuple[int, int] = (16, 16), mode: str = "RGB", value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode != "RGB" else (value, 40, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one byte of image data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def coco(images: list[dict], annotations: list[dict] | None = None, classes: list[str] = CLASSES) -> str:
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    return json.dumps({"images": images, "annotations": annotations or [], "categories": categories}, indent=1)


def detection_spec(extra: str = "") -> str:
    return ("task: detection\n"
            "data:\n  format: coco\n  root: .\n  images: images\n"
            "  splits: {val: {annotations: annotations.json}}\n" + extra +
            "model: {name: ssdlite320_mobilenet_v3_large}\n"
            "train: {image_size: 64, batch_size: 2, num_workers: 0}\n"
            "trainer: {accelerator: cpu}\n")


def masks_spec(classes: str = f"[{', '.join(MASK_CLASSES)}]", extra: str = "") -> str:
    return ("task: semantic_segmentation\n"
            f"data:\n  format: masks\n  root: .\n  classes: {classes}\n  val_fraction: 0.0\n  train_split: val\n" + extra +
            "model: {name: lraspp_mobilenet_v3_large}\n"
            "train: {image_size: 64, batch_size: 2, num_workers: 0}\n"
            "trainer: {accelerator: cpu}\n")


ONE_IMAGE = [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}]
ONE_BOX = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8]}]


def specs() -> None:
    base = ("task: detection\ndata: {format: coco, root: ../coco}\n"
            "model: {name: ssdlite320_mobilenet_v3_large}\n")
    cases = {
        "negative_epochs": base + "train:\n  max_epochs: -3\n",
        "batch_size_zero": base + "train:\n  batch_size: 0\n",
        "nan_learning_rate": base + "train:\n  optimizer: {name: sgd, lr: .nan}\n",
        "infinite_learning_rate": base + "train:\n  optimizer: {name: sgd, lr: .inf}\n",
        "unknown_model": base.replace("ssdlite320_mobilenet_v3_large", "yolo_v99"),
        "unknown_format": base.replace("format: coco", "format: yolo_darknet"),
        "misspelt_key": base + "train:\n  max_epoch: 3\n",
        "wrong_type": base + "train:\n  batch_size: four\n",
        "image_size_too_small": base + "train:\n  image_size: 8\n",
        "task_model_mismatch": base.replace("task: detection", "task: semantic_segmentation"),
        "missing_model": "task: detection\ndata: {format: coco, root: ../coco}\n",
        "syntax_error": base + "train:\n  max_epochs: [3\n  batch_size: 2\n",
        "python_tag": base + "name: !!python/object/apply:os.system ['echo pwned > PWNED']\n",
        "top_level_list": "- task: detection\n- model: ssdlite320_mobilenet_v3_large\n",
        "tab_indentation": base + "train:\n\tmax_epochs: 3\n",
        "invalid_timestamp": base + "name: 2024-13-45\n",
    }
    for name, text in cases.items():
        write(HERE / "specs" / f"{name}.yaml", text)
    write(HERE / "specs" / "empty.yaml", b"")
    write(HERE / "specs" / "masks_data_for_detection.yaml",
          "task: detection\ndata: {format: masks, root: ../masks/_good, classes: [background, shape]}\n"
          "model: {name: ssdlite320_mobilenet_v3_large}\n")
    write(HERE / "specs" / "data_file_misspelt_key.yaml", "format: coco\nroot: ../coco\nimages: images\nclass: [a]\n")
    write(HERE / "specs" / "latin1.yaml", (base + "name: caf\xe9\n").encode("latin-1"))


def coco_files() -> None:
    folder = HERE / "coco"
    write(folder / "_spec.yaml", "task: detection\ndata:\n  format: coco\n  root: .\n  images: images\n"
                                 "model: {name: ssdlite320_mobilenet_v3_large}\n"
                                 "train: {image_size: 64, batch_size: 2, num_workers: 0}\ntrainer: {accelerator: cpu}\n")
    good = json.loads(coco(ONE_IMAGE, ONE_BOX))

    def variant(change) -> str:
        data = json.loads(json.dumps(good))
        change(data)
        return json.dumps(data, indent=1)

    valid = coco(ONE_IMAGE, ONE_BOX)
    cases = {
        "syntax_error": valid.replace('"width": 16,', '"width": 16,,'),
        "truncated": valid[: len(valid) // 2],
        "top_level_list": "[]",
        "missing_images": variant(lambda d: d.pop("images")),
        "missing_categories": variant(lambda d: d.pop("categories")),
        "images_not_a_list": variant(lambda d: d.update(images={"1": "a.png"})),
        "annotations_not_a_list": variant(lambda d: d.update(annotations="none")),
        "string_image_id": variant(lambda d: d["images"][0].update(id="1")),
        "missing_file_name": variant(lambda d: d["images"][0].pop("file_name")),
        "width_as_text": variant(lambda d: d["images"][0].update(width="16px")),
        "bbox_three_numbers": variant(lambda d: d["annotations"][0].update(bbox=[2, 2, 8])),
        "bbox_as_text": variant(lambda d: d["annotations"][0].update(bbox="2,2,8,8")),
        "missing_category_id": variant(lambda d: d["annotations"][0].pop("category_id")),
        "category_without_name": variant(lambda d: d["categories"][0].pop("name")),
        "boolean_annotation_id": variant(lambda d: d["annotations"][0].update(id=True)),
        "segmentation_garbage": variant(lambda d: d["annotations"][0].update(bbox=None, segmentation="polygon")),
        "nested_too_deep": "[" * 5000,
        "bbox_missing": variant(lambda d: d["annotations"][0].pop("bbox")),
        "bbox_null": variant(lambda d: d["annotations"][0].update(bbox=None)),
        "iscrowd_two": variant(lambda d: d["annotations"][0].update(iscrowd=2)),
        "missing_annotations": variant(lambda d: d.pop("annotations")),
        "duplicate_category_id": variant(lambda d: d["categories"].append({"id": 1, "name": "circle"})),
        "zero_images": variant(lambda d: d.update(images=[], annotations=[])),
        "top_level_null": "null",
        "file_name_nul": variant(lambda d: d["images"][0].update(file_name="a\u0000.png")),
        "category_id_fraction": variant(lambda d: d["annotations"][0].update(category_id=1.5)),
        "image_id_huge": variant(lambda d: d["images"][0].update(id=10 ** 400)),
        "width_negative": variant(lambda d: d["images"][0].update(width=-16)),
        # found by tests/test_fuzz.py: valid JSON that crashed (OverflowError, int() limit, pycocotools, encode)
        "width_huge": variant(lambda d: d["images"][0].update(width="HUGE")).replace('"HUGE"', "1" + "0" * 400),
        "category_id_5000_digits": variant(lambda d: d["annotations"][0].update(category_id="HUGE"))
        .replace('"HUGE"', "1" + "0" * 5000),
        "rle_bad_size": variant(lambda d: (d["annotations"][0].pop("bbox"), d["annotations"][0].update(
            segmentation={"size": ["32", 32], "counts": "abc"}))),
        "file_name_surrogate": variant(lambda d: d["images"][0].update(file_name="a\ud800.png")),
    }
    for name, text in cases.items():
        write(folder / f"{name}.json", text)
    write(folder / "empty.json", b"")
    write(folder / "whitespace_only.json", b"  \n\t\n")
    write(folder / "latin1.json", valid.replace('"square"', '"carr\xe9"').encode("latin-1"))
    write(folder / "utf16.json", valid.encode("utf-16"))


VOC_XML = ("<annotation>\n  <filename>a.png</filename>\n  <size><width>16</width><height>16</height><depth>3</depth></size>\n"
           "  <object>\n    <name>square</name>\n    <bndbox><xmin>2</xmin><ymin>2</ymin><xmax>10</xmax><ymax>10</ymax></bndbox>\n"
           "  </object>\n</annotation>\n")


def voc_folders() -> None:
    folder = HERE / "voc"
    write(folder / "_spec.yaml", "task: detection\ndata:\n  format: voc\n  root: .\n  images: _images\n"
                                 f"  classes: [{', '.join(CLASSES)}]\n"
                                 "model: {name: ssdlite320_mobilenet_v3_large}\n"
                                 "train: {image_size: 64, batch_size: 2, num_workers: 0}\ntrainer: {accelerator: cpu}\n")
    write(folder / "_images" / "a.png", png())
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    cases = {
        "syntax_error": VOC_XML.replace("</name>", "</nam>"),
        "wrong_root_element": VOC_XML.replace("annotation>", "html>"),
        "missing_ymax": VOC_XML.replace("<ymax>10</ymax>", ""),
        "coordinate_as_text": VOC_XML.replace("<xmin>2</xmin>", "<xmin>two</xmin>"),
        "size_as_text": VOC_XML.replace("<width>16</width>", "<width>wide</width>"),
        "billion_laughs": f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY l0 "ha">{laughs}]>\n'
                          "<annotation><filename>&l9;</filename></annotation>\n",
        "external_dtd": '<?xml version="1.0"?>\n<!DOCTYPE annotation SYSTEM "http://example.com/voc.dtd">\n'
                        + VOC_XML,
        "empty_ymin": VOC_XML.replace("<ymin>2</ymin>", "<ymin></ymin>"),
        "size_infinite": VOC_XML.replace("<width>16</width>", "<width>1e309</width>"),
        "external_entity": '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/hostname">]>\n'
                           "<annotation><filename>&secret;</filename></annotation>\n",
    }
    for name, text in cases.items():
        write(folder / name / "a.xml", text)
    write(folder / "empty_file" / "a.xml", b"")
    write(folder / "not_utf8" / "a.xml", VOC_XML.replace("square", "carr\xe9").encode("latin-1"))
    write(folder / "no_xml_files" / "README.txt", "VOC annotations are missing: this folder has no *.xml file\n")


def image_folders() -> None:
    folder = HERE / "images"
    valid_png = png()
    cases = {
        "truncated_png": ("a.png", valid_png[: len(valid_png) // 2]),
        "truncated_jpeg": ("a.jpg", jpeg()[:200]),
        "text_named_jpeg": ("a.jpg", b"this is not a picture\n"),
        "zero_byte_png": ("a.png", b""),
        "png_bomb": ("a.png", png_header_only(100_000, 100_000)),
        "png_bomb_under_pillow_limit": ("a.png", png_header_only(20_000, 20_000)),  # refused by cvtrain's own check
        "jpeg_named_png_garbage": ("a.png", b"\xff\xd8\xff\xe0" + bytes(60)),
    }
    for name, (file_name, content) in cases.items():
        images = [{"id": 1, "file_name": file_name, "width": 16, "height": 16}]
        write(folder / name / "spec.yaml", detection_spec())
        write(folder / name / "annotations.json", coco(images, ONE_BOX))
        write(folder / name / "images" / file_name, content)
    escapes = {"path_escape": "../../../escaped.png", "absolute_path": "/etc/hostname", "missing_file": "gone.png"}
    for name, file_name in escapes.items():
        write(folder / name / "spec.yaml", detection_spec())
        write(folder / name / "annotations.json", coco([{"id": 1, "file_name": file_name, "width": 16, "height": 16}], ONE_BOX))
        write(folder / name / "images" / "a.png", valid_png)
    three = [{"id": i, "file_name": f"{name}.png", "width": 16, "height": 16}
             for i, name in enumerate("abc", start=1)]
    write(folder / "empty_folder" / "spec.yaml", detection_spec())
    write(folder / "empty_folder" / "annotations.json", coco(three, ONE_BOX))
    (folder / "empty_folder" / "images").mkdir(parents=True, exist_ok=True)
    write(folder / "empty_folder" / "images" / ".keep", b"")
    write(folder / "wrong_folder" / "spec.yaml", detection_spec())
    write(folder / "wrong_folder" / "annotations.json", coco(three, ONE_BOX))
    for name in ("x", "y", "z"):
        write(folder / "wrong_folder" / "images" / f"{name}.png", valid_png)
    write(folder / "one_training_image" / "spec.yaml", detection_spec().replace("batch_size: 2", "batch_size: 4")
          .replace("  splits: {val: {annotations: annotations.json}}\n",
                   "  splits: {train: {annotations: annotations.json}, val: {annotations: annotations.json}}\n"))
    write(folder / "one_training_image" / "annotations.json", coco(ONE_IMAGE, ONE_BOX))
    write(folder / "one_training_image" / "images" / "a.png", valid_png)
    write(folder / "missing_folder" / "spec.yaml", detection_spec())
    write(folder / "missing_folder" / "annotations.json", coco(ONE_IMAGE, ONE_BOX))


def mask_folders() -> None:
    folder = HERE / "masks"

    def case(name: str, mask_name: str, mask: bytes, spec: str | None = None, image: bytes | None = None) -> None:
        write(folder / name / "spec.yaml", spec or masks_spec())
        write(folder / name / "images" / "a.png", image or png())
        write(folder / name / "masks" / mask_name, mask)

    case("unknown_value", "a.png", png(mode="L", value=7))
    case("wrong_shape", "a.png", png((8, 8), mode="L", value=1))
    huge_value = io.BytesIO()
    Image.fromarray(np.full((16, 16), 2**31 - 1, dtype=np.int32), mode="I").save(huge_value, "TIFF")
    case("value_near_2_31", "a.tif", huge_value.getvalue())  # np.bincount asked for 16 GiB
    float_mask = io.BytesIO()
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32), mode="F").save(float_mask, "TIFF")
    case("float_values", "a.tif", float_mask.getvalue())
    case("colour_without_palette", "a.png", png(mode="RGB", value=200))
    case("corrupt_mask", "a.png", b"\x89PNG\r\n\x1a\n" + b"broken" * 4)
    case("no_classes", "a.png", png(mode="L", value=1), spec=masks_spec().replace("  classes: [background, shape]\n", ""))
    case("ignore_index_is_a_class", "a.png", png(mode="L", value=1), spec=masks_spec(extra="  ignore_index: 1\n"))
    case("unpaired_names", "b.png", png(mode="L", value=1))
    write(folder / "_good" / "images" / "a.png", png())
    write(folder / "_good" / "masks" / "a.png", png(mode="L", value=1))
    write(folder / "missing_mask_folder" / "spec.yaml", masks_spec())
    write(folder / "missing_mask_folder" / "images" / "a.png", png())


def finding_folders() -> None:
    """Data that loads, which `cvtrain check` must report with its own code (or, for odd names, render literally)."""
    folder = HERE / "findings"

    def image_bytes(mode: str, exif_orientation: int | None = None, size=(16, 12)) -> bytes:
        buffer = io.BytesIO()
        image = Image.new(mode, size, 90 if mode in ("L", "I;16") else (90, 40, 160, 128)[: len(mode)])
        if exif_orientation is None:
            image.save(buffer, "PNG")
        else:
            exif = Image.Exif()
            exif[0x0112] = exif_orientation
            image.save(buffer, "JPEG", exif=exif)
        return buffer.getvalue()

    def detection(name: str, file_name: str, content: bytes, width: int = 16, height: int = 12,
                  classes: list[str] = CLASSES) -> None:
        images = [{"id": 1, "file_name": file_name, "width": width, "height": height}]
        write(folder / name / "spec.yaml", detection_spec())
        write(folder / name / "annotations.json", coco(images, ONE_BOX, classes=classes))
        write(folder / name / "images" / file_name, content)

    detection("rgba_image", "a.png", image_bytes("RGBA"))
    detection("exif_rotated_jpeg", "a.jpg", image_bytes("RGB", exif_orientation=6))
    # Declared 16x16, the file is 16x12: a size-mismatch finding names the file in the report.
    detection("dollar_names", "$x$.png", image_bytes("RGB"), height=16, classes=["$\\alpha$", "disc", "$1 and $2"])
    detection("script_names", "<script>a.png", image_bytes("RGB"), height=16,
              classes=["<script>alert(1)</script>", "disc", "a&b"])
    detection("undecodable_image", "a.jpg", b"this is not a picture\n")
    detection("coco_size_zero", "a.png", image_bytes("RGB"), width=0, height=0)  # 0: unknown, as some tools write
    detection("huge_coordinate", "a.png", image_bytes("RGB"))
    huge = json.loads(coco([{"id": 1, "file_name": "a.png", "width": 16, "height": 12}], ONE_BOX))
    huge["annotations"][0]["bbox"] = [2, 2, "HUGE", 8]  # a 309-digit integer: valid JSON, beyond any float
    write(folder / "huge_coordinate" / "annotations.json", json.dumps(huge).replace('"HUGE"', "1" + "0" * 308))

    def masks(name: str, mask: np.ndarray, extra: str = "") -> None:
        write(folder / name / "spec.yaml", masks_spec(extra=extra))
        write(folder / name / "images" / "a.png", png())
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, "PNG")
        write(folder / name / "masks" / "a.png", buffer.getvalue())

    sixteen = np.zeros((16, 16), np.uint16)
    sixteen[4:12, 4:12] = 1
    masks("mask_16_bit", sixteen)
    masks("mask_all_ignore", np.full((16, 16), 255, np.uint8), extra="  ignore_index: 255\n")

    voc_spec = ("task: detection\ndata:\n  format: voc\n  root: .\n  images: images\n  annotations: xml\n"
                f"  classes: [{', '.join(CLASSES)}]\nmodel: {{name: ssdlite320_mobilenet_v3_large}}\n")
    for name, xml in (("voc_size_missing", VOC_XML.replace(
            "  <size><width>16</width><height>16</height><depth>3</depth></size>\n", "")),
                      ("voc_size_zero", VOC_XML.replace("<width>16</width><height>16</height>",
                                                        "<width>0</width><height>0</height>"))):
        write(folder / name / "spec.yaml", voc_spec)
        write(folder / name / "xml" / "a.xml", xml)
        write(folder / name / "images" / "a.png", png())
    write(folder / "voc_unannotated_images" / "spec.yaml", voc_spec)
    write(folder / "voc_unannotated_images" / "xml" / "a.xml", VOC_XML)
    for stem in ("a", "b", "c"):
        write(folder / "voc_unannotated_images" / "images" / f"{stem}.png", png())


def checkpoint_files() -> None:
    folder = HERE / "checkpoints"
    write(folder / "_spec.yaml", detection_spec().replace("images: images", "images: _images")
          .replace("annotations: annotations.json", "annotations: _annotations.json"))
    write(folder / "_annotations.json", coco(ONE_IMAGE, ONE_BOX))
    write(folder / "_images" / "a.png", png())
    buffer = io.BytesIO()
    torch.save({"state_dict": {"weight": torch.zeros(64)}, "hyper_parameters": {"config": {}}}, buffer)
    write(folder / "truncated.ckpt", buffer.getvalue()[: len(buffer.getvalue()) // 2])
    write(folder / "zero_bytes.ckpt", b"")
    write(folder / "text.ckpt", "model weights go here\n")
    buffer = io.BytesIO()
    torch.save(torch.zeros(3), buffer)
    write(folder / "plain_tensor.ckpt", buffer.getvalue())
    buffer = io.BytesIO()
    torch.save({"state_dict": {"weight": torch.zeros(3)}}, buffer)
    write(folder / "weights_only_no_config.ckpt", buffer.getvalue())
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "hyper_parameters": {"config": CodeOnLoad()}}, buffer)
    write(folder / "code_on_load.ckpt", buffer.getvalue())
    write(folder / "code_on_load_resumed.ckpt", buffer.getvalue())
    for name in ("other_classes", "resume_other_classes"):
        write(folder / name / "spec.yaml", detection_spec())
        write(folder / name / "annotations.json", coco(ONE_IMAGE, ONE_BOX, classes=["cat", "dog"]))
        write(folder / name / "images" / "a.png", png())
    write(folder / "other_task" / "spec.yaml", detection_spec())
    write(folder / "other_task" / "annotations.json", coco(ONE_IMAGE, [], classes=MASK_CLASSES))
    write(folder / "other_task" / "images" / "a.png", png())


class CodeOnLoad:
    """Unpickling this runs ``exec``: it writes a file named PWNED into the working directory."""

    def __reduce__(self):
        return exec, ("open('PWNED', 'w').write('this checkpoint ran code when it was loaded')",)


def missing_folders() -> None:
    folder = HERE / "missing"
    write(folder / "dataset_root" / "spec.yaml", detection_spec().replace("root: .", "root: ./not_here"))
    write(folder / "annotation_file" / "spec.yaml", detection_spec().replace("annotations.json", "instances_val.json"))
    write(folder / "voc_annotations" / "spec.yaml", "task: detection\ndata: {format: voc, root: ., classes: [square]}\n"
                                                     "model: {name: ssdlite320_mobilenet_v3_large}\n")
    write(folder / "split_list" / "spec.yaml", detection_spec().replace("  splits: {val: {annotations: annotations.json}}\n",
                                                                          "  splits: {val: {list: val.txt}}\n"))
    write(folder / "split_list" / "annotations.json", coco(ONE_IMAGE, ONE_BOX))
    write(folder / "resume_without_run" / "spec.yaml", detection_spec())
    write(folder / "resume_without_run" / "annotations.json", coco(ONE_IMAGE, ONE_BOX))
    write(folder / "resume_without_run" / "images" / "a.png", png())
    write(folder / "predict_source" / "README.txt", "predict is pointed at photos/, which is not here\n")


if __name__ == "__main__":
    for name in ("specs", "coco", "voc", "images", "masks", "checkpoints", "missing", "findings"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    specs()
    coco_files()
    voc_folders()
    image_folders()
    mask_folders()
    checkpoint_files()
    missing_folders()
    finding_folders()
