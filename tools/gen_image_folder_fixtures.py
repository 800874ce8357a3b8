#!/usr/bin/env python3
"""Writes tests/fixtures/image_folder/ (a tiny ImageFolder tree of PNG pictures of odd sizes, RGB
and grey, plus a JPEG and a nested folder) and tests/fixtures/image_folder_expected.json: what
DiT's train.py transform makes of each picture before its flip, center_crop_arr(pil_image, size)
(halvings with Image.BOX while the short side is at least twice the size, Image.BICUBIC to the
size, a center crop), computed here with Pillow (Debian's python3-pil), in torchvision
ImageFolder's order (classes sorted, files sorted). This is our own re-statement of that
transform, run on Pillow.

    /usr/bin/python3 tools/gen_image_folder_fixtures.py
"""
import json
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")
ROOT = os.path.join(OUT, "image_folder")


def center_crop_arr(pil_image, image_size):
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    cy, cx = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[cy:cy + image_size, cx:cx + image_size]


def picture(rng, w, h, mode):
    # smooth shapes and sharp edges, so both resampling filters have something to do
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(x / (w / 5.0)) * np.cos(y / (h / 3.0))
    base[(x - w // 3) ** 2 + (y - h // 2) ** 2 < (min(w, h) // 4) ** 2] = 250
    noise = rng.integers(-20, 21, size=(h, w, 3))
    rgb = np.clip(base[..., None] + noise + np.array([0, 40, -40]), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    return img.convert("L") if mode == "L" else img


def main():
    rng = np.random.default_rng(0)
    files = {  # class/relative path: (w, h, mode)
        "boots/a.png": (37, 23, "RGB"),
        "boots/b.png": (64, 64, "RGB"),
        "boots/nested/c.png": (9, 50, "L"),
        "coats/x.png": (101, 67, "RGB"),
        "coats/y.png": (16, 16, "RGB"),
        "coats/z.jpg": (20, 30, "RGB"),
    }
    for rel, (w, h, mode) in files.items():
        path = os.path.join(ROOT, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        picture(rng, w, h, mode).save(path)
    expected = {"size": 16, "classes": sorted(os.listdir(ROOT)), "pictures": []}
    for label, cls in enumerate(expected["classes"]):
        for root, _, names in sorted(os.walk(os.path.join(ROOT, cls))):
            for name in sorted(names):
                path = os.path.join(root, name)
                img = Image.open(path).convert("RGB")  # torchvision's pil_loader
                arr = center_crop_arr(img, expected["size"])
                entry = {"file": os.path.relpath(path, ROOT), "label": label}
                if not name.endswith(".jpg"):  # JPEG decoders differ in their last bits: only loaded, not compared
                    entry["chw"] = arr.transpose(2, 0, 1).reshape(-1).tolist()
                expected["pictures"].append(entry)
    with open(os.path.join(OUT, "image_folder_expected.json"), "w") as f:
        json.dump(expected, f)
    print("wrote", ROOT, "and image_folder_expected.json:", len(expected["pictures"]), "pictures")


if __name__ == "__main__":
    main()
