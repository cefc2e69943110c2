"""Builders of the zoo's real calibration and evaluation splits.

Each builder is deterministic (seeded by model and split) and keeps the two splits disjoint at the source:
different digits, different source photographs, different fonts and words. The MNIST splits ship in
``models/``; the others are made from scikit-image's bundled images and text rendered with Pillow in the
TrueType fonts that matplotlib ships, so they need the ``zoo`` extra (scikit-image, Pillow, matplotlib).
Text is laid out by libraqm where Pillow finds it (it needs the system's FriBiDi, Debian ``libfribidi0``), as
on the machines that measured BENCHMARKS.md; without it Pillow's basic layout places glyphs differently and
the text splits differ (logged once).
"""

from __future__ import annotations

import functools
import logging
import zlib
from pathlib import Path

import numpy as np

from .data import Dataset
from .errors import ZooError

__all__ = ["build"]

log = logging.getLogger(__name__)

# Fonts and words differ between the splits so that evaluation text is never seen during the search.
_FONTS = {
    "calibration": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf"),
    "evaluation": ("DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSans-Oblique.ttf", "STIXGeneralBol.ttf"),
}
_WORDS = {
    "calibration": (
        "model network weight layer sparse prune invoice total amount date order number street city "
        "account balance payment receipt station river mountain window garden kitchen summer winter "
        "Monday March 2019 42.50 No. 1187 USD Tel: Fax: ID-7731 Road Ltd. ACME"
    ).split(),
    "evaluation": (
        "quantum signal vector matrix budget customer address phone email office market price label "
        "letter doctor hospital school teacher student library museum forest ocean island bridge "
        "Friday October 2024 17.95 Ref. 5520 EUR Attn: Qty: SN-4402 Avenue Inc. GLOBEX"
    ).split(),
}
_PHOTOS = {
    "calibration": ("astronaut", "coffee", "rocket", "cat", "hubble_deep_field", "camera", "brick", "grass"),
    "evaluation": ("chelsea", "immunohistochemistry", "retina", "stereo_motorcycle", "coins", "moon", "gravel", "clock"),
}


def build(entry, split: str) -> Dataset:
    """Build ``split`` of zoo ``entry`` (a :class:`~onnx_de.zoo.ZooEntry`)."""
    builders = {
        "mnist": _mnist,
        "ocr_pages": _ocr_pages,
        "text_lines": _text_lines,
        "photos": _photos,
        "captchas": _captchas,
    }
    spec = entry.data
    if spec["builder"] != "mnist":
        _require_zoo_extra(entry.name)
    rng = np.random.default_rng(zlib.crc32(f"{entry.name}/{split}".encode()))
    inputs, labels, groups = builders[spec["builder"]](spec, split, rng)
    return Dataset({spec["input"]: inputs}, labels, f"zoo:{entry.name}/{split}", groups)


def _require_zoo_extra(name: str) -> None:
    try:
        import matplotlib  # noqa: F401  (its bundled TrueType fonts)
        import PIL  # noqa: F401
        import skimage  # noqa: F401
    except ImportError as e:
        raise ZooError(f"building the data of {name} needs the zoo extra: pip install 'onnx-de[zoo]' ({e.name} missing)") from e


# Each builder returns (inputs, labels or None, groups or None): groups give the source of each sample (the
# photograph a crop was cut from, the font a line was set in) where samples share one.


def _mnist(spec: dict, split: str, rng) -> tuple[np.ndarray, np.ndarray, None]:
    from .zoo import models_dir

    with np.load(models_dir() / spec["file"], allow_pickle=False) as archive:
        prefix = "calibration" if split == "calibration" else "eval"  # the teachers never saw either
        pixels = archive[f"{prefix}_x"][: spec[split]]
        labels = archive[f"{prefix}_y"][: spec[split]]
    shape = (len(pixels), *spec["sample_shape"])
    return (pixels.astype(np.float32) / 255.0).reshape(shape), labels.astype(np.int64), None


def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), size, layout_engine=_layout_engine())


@functools.cache
def _layout_engine():
    """libraqm's layout where Pillow has it, else the basic one, with a warning: the text data then differs."""
    from PIL import ImageFont, features

    if features.check("raqm"):
        return ImageFont.Layout.RAQM
    log.warning("Pillow has no libraqm here (install the system's FriBiDi, e.g. Debian libfribidi0): the zoo's "
                "text pages, lines and captchas are laid out differently from those BENCHMARKS.md was measured on")
    return ImageFont.Layout.BASIC


def _phrase(rng, split: str, count: int) -> str:
    words = _WORDS[split]
    return " ".join(words[i] for i in rng.integers(0, len(words), count))


def _ink(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 90, 3))


def _paper(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(200, 256, 3))


def _to_chw(image, scale: float, mean: float, std: float, bgr: bool) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if bgr:
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(((pixels / scale - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def _scikit_image(name: str):
    import skimage.data
    from PIL import Image

    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo pairs
        array = array[0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def _ocr_pages(spec: dict, split: str, rng) -> tuple[np.ndarray, None, None]:
    """Document-like pages: text lines in several fonts and sizes, plus scikit-image's page or text scan."""
    from PIL import Image, ImageDraw

    size = spec["size"]
    samples = []
    scan = _scikit_image("page" if split == "calibration" else "text")
    for index in range(spec[split]):
        page = Image.new("RGB", (size, size), _paper(rng))
        if index % 4 == 0:  # a real scanned text image, scaled into the page
            ratio = min(size / scan.width, size / scan.height) * rng.uniform(0.7, 1.0)
            page.paste(scan.resize((int(scan.width * ratio), int(scan.height * ratio)), Image.BILINEAR),
                       (int(rng.integers(0, 8)), int(rng.integers(0, size // 3))))
        draw = ImageDraw.Draw(page)
        y = int(rng.integers(4, 24))
        while y < size - 20:
            font = _font(_FONTS[split][rng.integers(0, len(_FONTS[split]))], int(rng.integers(12, 34)))
            if index % 4 != 0 or y > size // 2:
                draw.text((int(rng.integers(2, size // 4)), y), _phrase(rng, split, int(rng.integers(1, 5))),
                          font=font, fill=_ink(rng))
            y += int(font.size * rng.uniform(1.3, 2.4))
        samples.append(_to_chw(page, 255.0, 0.5, 0.5, bgr=True))
    return np.stack(samples), None, None


def _text_lines(spec: dict, split: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text-line crops, 48 x 192 as PP-OCR's classifier wants them; half rotated by 180 degrees (label 1)."""
    from PIL import Image, ImageDraw

    height, width = spec["height"], spec["width"]
    samples, labels, fonts = [], [], []
    for index in range(spec[split]):
        fonts.append(int(rng.integers(0, len(_FONTS[split]))))
        font = _font(_FONTS[split][fonts[-1]], int(rng.integers(20, 40)))
        text = _phrase(rng, split, int(rng.integers(1, 4)))
        left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
        margin = int(rng.integers(2, 8))
        line = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), _paper(rng))
        ImageDraw.Draw(line).text((margin - left, margin - top), text, font=font, fill=_ink(rng))
        rotated = index % 2 == 1
        if rotated:
            line = line.rotate(180)
        resized_width = min(width, int(np.ceil(height * line.width / line.height)))
        chw = _to_chw(line.resize((resized_width, height), Image.BILINEAR), 255.0, 0.5, 0.5, bgr=True)
        padded = np.zeros((3, height, width), dtype=np.float32)
        padded[:, :, :resized_width] = chw
        samples.append(padded)
        labels.append(int(rotated))
    return np.stack(samples), np.asarray(labels, dtype=np.int64), np.asarray(fonts, dtype=np.int64)


def _photos(spec: dict, split: str, rng) -> tuple[np.ndarray, None, np.ndarray]:
    """Random resized crops and flips of scikit-image's bundled photographs; splits use disjoint photos."""
    from PIL import Image

    size = spec["size"]
    photos = [_scikit_image(name) for name in _PHOTOS[split]]
    samples = []
    for index in range(spec[split]):
        photo = photos[index % len(photos)]
        area = photo.width * photo.height * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(min(photo.width, np.sqrt(area * aspect)))
        h = int(min(photo.height, np.sqrt(area / aspect)))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        crop = photo.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        samples.append(_to_chw(crop, 1.0, spec["mean"], spec["std"], bgr=False))
    return np.stack(samples), None, np.arange(len(samples), dtype=np.int64) % len(photos)


def _captchas(spec: dict, split: str, rng) -> tuple[np.ndarray, None, None]:
    """Click-captcha-like images: noisy backgrounds with scattered large glyphs (Greek, Cyrillic, symbols).

    ddddocr's detector was trained on CJK click captchas; dense non-Latin glyphs are what it finds with
    confidence among the scripts the bundled DejaVu fonts cover. The splits use disjoint glyphs and fonts.
    """
    from PIL import Image, ImageDraw

    size = spec["size"]
    glyphs = _CAPTCHA_GLYPHS[split]
    fonts = _CAPTCHA_FONTS[split]
    samples = []
    for _ in range(spec[split]):
        base = np.full((size, size, 3), rng.integers(150, 256, 3), dtype=np.float32)
        base = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(base)
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            font = _font(fonts[rng.integers(0, len(fonts))], int(rng.integers(30, 70)))
            position = (int(rng.integers(10, size - 76)), int(rng.integers(10, size - 76)))
            draw.text(position, glyphs[rng.integers(0, len(glyphs))], font=font,
                      fill=tuple(int(v) for v in rng.integers(0, 120, 3)), stroke_width=1)
        samples.append(_to_chw(image, 1.0, 0.0, 1.0, bgr=True))
    return np.stack(samples), None, None


_CAPTCHA_GLYPHS = {"calibration": "ΩΣΦΨΛΠΞΓΔθλπβδζ§@&", "evaluation": "ЖЩЯБДфЮЙЦУКНГШ¶#%"}
_CAPTCHA_FONTS = {
    "calibration": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf"),
    "evaluation": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf"),
}
