"""``OptimizeConfig``: the settings of one ``optimize`` run, from TOML, JSON or code, with per-layer overrides.

A config file is TOML::

    sparsity = 0.9          # global target; or leave it out and give a budget
    bits = 4                # 1-8 (step: 1-14), or "auto" (needs budget)
    budget = 0.98           # the lowest primary fidelity metric on the calibration data
    seed = 0

    [layers]                # per-layer overrides: exact names, or re:PATTERN (full match)
    "fc3.weight" = { sparsity = 0.5, bits = 6 }
    "re:conv.*" = { sparsity = 0.7 }

Precedence: an exact name beats every pattern; among patterns the first listed that matches wins; a layer
no entry matches follows the global settings. With sparsity overrides every layer gets its own target (the
override's, or the global one) instead of competing for a global one. Unknown keys anywhere are errors that
name the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError, is_int
from .export import PARAMETER_MANTISSA_BITS, check_mantissa_bits
from .evolution import PRIORS, SearchConfig
from .model import DEFAULT_MIN_SIZE, WeightSelection, matches
from .parallel import parse_executor
from .quantizers import check_bits
from .rounding import ROUNDINGS
from .runtime import DEVICES

__all__ = ["CONFIG_VERSION", "OptimizeConfig", "LayerOverride", "load_config", "layer_setting"]

CONFIG_VERSION = 1


@dataclass(frozen=True)
class LayerOverride:
    """Settings of the layers an exact name or ``re:`` pattern matches (``None``: the global setting)."""

    sparsity: float | None = None
    bits: int | None = None


@dataclass
class OptimizeConfig:
    """Everything ``optimize`` needs besides the model and data. Round-trips through :meth:`to_dict`.

    Attributes:
        sparsity: global target fraction of zeros (0: no pruning, quantize and encode only); ``None`` with a
            ``budget``: the sparsity and bits of the smallest container that keeps the budget on held-out
            calibration samples (see ``optimize``).
        max_sparsity: with a budget alone, the sparsest level the search tries (0: quantization only; ``None``:
            the whole ladder, see ``optimize``).
        bits: bits per surviving weight (1-8; ``step``: 1-14) or ``auto`` (fewest within ``budget``).
        budget: the lowest primary fidelity metric (top-1 agreement, mask IoU, ...) on the calibration data.
        scheme: ``codebook``, ``uniform`` or ``step`` levels.
        per_channel: a scale or codebook per output channel (default: per channel for uniform, per tensor for
            codebooks).
        seed: random seed of the search.
        population, survivors, prior, pool: Directed-Evolution settings (see :class:`~onnx_de.SearchConfig`).
        compensate: refit surviving weights by least squares after the search.
        refits: with ``compensate``, also refit them this many times during the search, evenly spaced.
        mask_folds: with ``compensate``, choose among the refits from DE's, magnitude's and Wanda's masks by this
            many folds of cross-validation (0: by the samples they were fitted to); see :func:`~onnx_de.sparsify`.
        layers: per-layer overrides keyed by exact name or ``re:PATTERN``.
        include, exclude, min_size: which weights are prunable (see :class:`~onnx_de.WeightSelection`).
        calibration_samples: use at most this many calibration samples.
        augment, augment_shift: add this many copies of the calibration images, each sample shifted by up to
            ``augment_shift`` pixels, to the data the search, the refits and the quantization fit (never to the
            samples a budget search holds out); see :func:`~onnx_de.sparsify`.
        threads: ONNX Runtime intra-op threads (per worker).
        workers, executor: score the search's candidates on this many workers: threads of this process
            (``local``) or actors of a Ray cluster (``ray``, ``ray:ADDRESS``); see :func:`~onnx_de.sparsify`.
        device: where the search scores candidates: ``auto``, ``cpu`` or ``cuda``.
        entropy_weight: codebooks: the level fit's trade of error for code length (0: plain Lloyd-Max); see
            :func:`~onnx_de.quantize`.
        rounding: ``feedback`` (error-feedback rounding, the default) or ``nearest``; see :func:`~onnx_de.quantize`.
        mantissa_bits: mantissa bits kept by the float parameters not quantized (0-23; 23: exact); see
            :func:`~onnx_de.quantize`.
        fast_decode: write a container that decodes at zstd's speed, a little larger (see :func:`~onnx_de.encode`).
    """

    sparsity: float | None = None
    max_sparsity: float | None = None
    bits: int | str | None = None
    budget: float | None = None
    scheme: str = "codebook"
    per_channel: bool | None = None
    seed: int = 0
    population: int = SearchConfig.population
    pool: float = SearchConfig.pool
    survivors: int = SearchConfig.survivors
    prior: str = SearchConfig.prior
    compensate: bool = True
    refits: int = SearchConfig.refits
    mask_folds: int = 0
    layers: dict[str, LayerOverride] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int = DEFAULT_MIN_SIZE
    calibration_samples: int | None = None
    augment: int = 0
    augment_shift: int = 1
    threads: int | None = None
    workers: int = 1
    executor: str = "local"
    device: str = "auto"
    entropy_weight: float = 0.0
    rounding: str = "feedback"
    mantissa_bits: int = PARAMETER_MANTISSA_BITS
    fast_decode: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        self.layers = {key: value if isinstance(value, LayerOverride) else _override(key, value)
                       for key, value in self.layers.items()}
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget}")
        if self.sparsity is None and self.budget is None:
            raise ConfigError("give a sparsity target, a fidelity budget, or both")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be at least 0 and below 1, got {self.sparsity}")
        if self.max_sparsity is not None:
            if self.sparsity is not None or self.budget is None:
                raise ConfigError("max_sparsity bounds the search of a budget alone: give a budget and no sparsity")
            if not 0 <= self.max_sparsity < 1:
                raise ConfigError(f"max_sparsity must be at least 0 and below 1, got {self.max_sparsity}")
        if self.bits is None:
            self.bits = "auto" if self.budget is not None else 4
        if self.bits == "auto" and self.budget is None:
            raise ConfigError("bits = auto needs a fidelity budget")
        check_bits(self.bits, self.scheme, auto=True)  # and the scheme
        for key, override in self.layers.items():
            if override.bits is not None:
                check_bits(override.bits, self.scheme, f"layers.{key}.bits")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        parse_executor(self.executor, self.workers)
        if self.scheme != "codebook" and self.entropy_weight:
            raise ConfigError("entropy_weight applies to codebooks only (scheme = \"codebook\")")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        check_mantissa_bits(self.mantissa_bits)
        if self.refits and not self.compensate:
            raise ConfigError("refits need compensation (compensate = true)")
        if self.mask_folds == 1 or (self.mask_folds and not self.compensate):
            raise ConfigError(f"mask_folds must be 0 or at least 2, with compensation; got {self.mask_folds}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        self.search()  # validates the search settings

    def _check_types(self) -> None:
        """Each setting's type, so that a config file's typo is an error naming the key, not a crash later."""
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        checks = {
            "sparsity": lambda v: v is None or number(v), "max_sparsity": lambda v: v is None or number(v),
            "budget": lambda v: v is None or number(v),
            "bits": lambda v: v is None or v == "auto" or is_int(v), "scheme": lambda v: isinstance(v, str),
            "per_channel": lambda v: v is None or isinstance(v, bool), "seed": is_int, "population": is_int,
            "pool": lambda v: number(v) and v >= 1,
            "survivors": is_int, "prior": lambda v: isinstance(v, str), "compensate": lambda v: isinstance(v, bool),
            "refits": lambda v: is_int(v) and v >= 0, "mask_folds": lambda v: is_int(v) and v >= 0,
            "layers": lambda v: isinstance(v, dict),
            "include": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
            "exclude": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
            "min_size": is_int, "calibration_samples": lambda v: v is None or (is_int(v) and v > 0),
            "augment": lambda v: is_int(v) and v >= 0, "augment_shift": lambda v: is_int(v) and v >= 1,
            "threads": lambda v: v is None or (is_int(v) and v > 0), "workers": is_int,
            "executor": lambda v: isinstance(v, str), "device": lambda v: isinstance(v, str),
            "entropy_weight": lambda v: number(v) and v >= 0, "fast_decode": lambda v: isinstance(v, bool),
            "rounding": lambda v: isinstance(v, str), "mantissa_bits": is_int,
        }
        for key, valid in checks.items():
            if not valid(getattr(self, key)):
                raise ConfigError(f"config key {key!r} has a value of the wrong type: {getattr(self, key)!r}")

    @property
    def selection(self) -> WeightSelection:
        return WeightSelection(self.include, self.exclude, self.min_size)

    @property
    def prunes(self) -> bool:
        """Whether a global or per-layer sparsity target asks for any zeros (sparsity 0 alone: quantize only)."""
        return self.sparsity != 0 or any(o.sparsity for o in self.layers.values())

    def search(self, sparsity: float | None = None) -> SearchConfig:
        """The Directed-Evolution settings for the config's global target, or for ``sparsity`` (then without the
        budget, which a budget search checks on held-out samples instead)."""
        target = sparsity if sparsity is not None else self.sparsity
        per_layer = _by_precedence({key: o.sparsity for key, o in self.layers.items() if o.sparsity is not None})
        if per_layer:  # the layers no override names keep the global target
            per_layer["re:.*"] = target if target is not None else 0.0
        return SearchConfig(sparsity=target or SearchConfig.sparsity, per_layer=per_layer,  # 0: per_layer only
                            population=self.population, survivors=self.survivors, prior=self.prior, pool=self.pool,
                            seed=self.seed, refits=self.refits,
                            budget=self.budget if sparsity is None and self.sparsity is not None else None)

    def layer_bits(self) -> dict[str, int]:
        """Fixed bits per exact name or pattern, exact names first (the order :func:`layer_setting` reads)."""
        return _by_precedence({key: o.bits for key, o in self.layers.items() if o.bits is not None})

    def to_dict(self) -> dict:
        """A JSON-ready dict (with ``version``) that :meth:`from_dict` turns back into an equal config."""
        out = asdict(self)
        out["layers"] = {key: {k: v for k, v in asdict(o).items() if v is not None} for key, o in self.layers.items()}
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        return {"version": CONFIG_VERSION, **out}

    @classmethod
    def from_dict(cls, values: dict) -> "OptimizeConfig":
        """The config of ``values``; unknown keys and versions are :class:`ConfigError`."""
        values = dict(values)
        version = values.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version!r} is not supported (this onnx-de reads {CONFIG_VERSION})")
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def with_overrides(self, **changes) -> "OptimizeConfig":
        """A copy with the given settings replaced (``None`` values are ignored). ``layers`` merge: an entry's
        settings replace those of the same name or pattern, the other entries stay."""
        values = self.to_dict()
        layers = values["layers"]
        for key, override in (changes.pop("layers", None) or {}).items():
            given = asdict(override) if isinstance(override, LayerOverride) else dict(override)
            layers[key] = {**layers.get(key, {}), **{k: v for k, v in given.items() if v is not None}}
        values.update({k: v for k, v in changes.items() if v is not None})
        return OptimizeConfig.from_dict(values)


def load_config(path: str | Path) -> OptimizeConfig:
    """Read a TOML (or ``.json``) config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from e
    try:
        values = json.loads(text) if path.suffix == ".json" else _toml().loads(text)
    except ValueError as e:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from e
    try:
        return OptimizeConfig.from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def layer_setting(name: str, overrides: dict[str, object]):
    """The value for weight ``name`` in ``overrides``: its exact name, else the first pattern that matches."""
    if name in overrides:
        return overrides[name]
    return next((value for key, value in overrides.items() if key.startswith("re:") and matches(name, key)), None)


def _by_precedence(overrides: dict) -> dict:
    """Exact names first, then patterns in the order given: the first match of this order wins."""
    return {**{k: v for k, v in overrides.items() if not k.startswith("re:")},
            **{k: v for k, v in overrides.items() if k.startswith("re:")}}


def _override(key: str, value) -> LayerOverride:
    if not isinstance(value, dict):
        raise ConfigError(f"layers.{key} must be a table like {{ sparsity = 0.5, bits = 6 }}")
    for item in value:
        if item not in ("sparsity", "bits"):
            raise ConfigError(f"unknown config key 'layers.{key}.{item}' (known: bits, sparsity)")
    sparsity, bits = value.get("sparsity"), value.get("bits")
    if sparsity is not None and (not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool)
                                 or not 0 <= sparsity < 1):
        raise ConfigError(f"layers.{key}.sparsity must be in [0, 1), got {sparsity!r}")
    if key.startswith("re:"):
        try:
            re.compile(key[3:])
        except re.error as e:
            raise ConfigError(f"layers.{key}: not a regular expression ({e})") from e
    return LayerOverride(sparsity=sparsity, bits=bits)


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib
