"""``report.html``: one self-contained page (inline SVG plots, no scripts, no fetches) from ``report.json``'s dict."""

from __future__ import annotations

import html

__all__ = ["render_html"]

_WIDTH = 720
_COLORS = {"sparsity": "#4c72b0", "bits": "#dd8452", "line": "#4c72b0", "header+index+graph": "#8c8c8c",
           "masks": "#4c72b0", "symbols": "#dd8452", "tables": "#55a868", "raw": "#c44e52"}
_STYLE = """body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}table{border-collapse:collapse}
td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}td:first-child,th:first-child{text-align:left}
svg text{font-size:11px;font-family:system-ui,sans-serif}.note{color:#666;font-size:.9em}"""


def render_html(report: dict) -> str:
    """The HTML page of an ``optimize`` report: summary, per-layer sparsity and bits, the search trajectory,
    the container's size breakdown, and teacher-versus-student fidelity."""
    sizes = report["sizes"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>onnx-de report: {_e(report['source'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>onnx-de: {_e(report['source'])}</h1>",
        _table([("original model", f"{sizes['original']:,} bytes"),
                ("ONNX with quantized weights", f"{sizes['onnx']:,} bytes"),
                ("container (.ode)", f"{sizes['container']:,} bytes: {sizes['ratio']:.1f}x smaller"),
                ("sparsity", f"{report['sparsity']:.4f}" + (" (stopped by the budget)"
                                                           if report.get("stopped") == "budget" else "")),
                *_refit(report.get("masks_from")),
                ("bits per surviving weight", f"{report['average_bits']:.2f}"), *_budget(report.get("budget"))]),
        "<h2>Fidelity on the evaluation split (model decoded from the container)</h2>",
        _fidelity(report.get("fidelity")),
        "<h2>Per layer: sparsity and bits</h2>", _layers(report["layers"]),
        "<h2>The search: sparsity and divergence on the calibration data</h2>", _trajectory(report["trajectory"]),
        "<h2>Where the container's bytes go</h2>", _sizes(report["container"]),
        "<h2>Settings</h2>", _table([(k, str(v)) for k, v in report["config"].items()]),
        "<p class='note'>Numbers: report.json beside this file.</p></body></html>",
    ]
    return "\n".join(parts)


def _refit(masks_from: str | None) -> list[tuple[str, str]]:
    if not masks_from:
        return []
    source = ("the search's own masks" if masks_from == "search"
              else f"{masks_from}'s masks at the search's per-layer sparsity")
    return [("zeros and refit", f"{source} (the least-squares refit pass kept)")]


def _budget(check: dict | None) -> list[tuple[str, str]]:
    if not check:
        return []
    verdict = ("" if "kept_on_evaluation" not in check else
               f"; evaluation {check['evaluation']:.4f}: " + ("kept" if check["kept_on_evaluation"] else "MISSED"))
    return [("fidelity budget", f"{check['value']} on {check['judged_on']}{verdict}")]


def _fidelity(fidelity: dict | None) -> str:
    if not fidelity:
        return "<p class='note'>No evaluation data was given.</p>"
    rows = [("metric", "value")]
    for key in ("top1_agreement", "accuracy", "teacher_accuracy", "kl", "mask_iou", "detection_f1", "detection_recall",
                "detection_precision", "teacher_objects", "rel_l2", "cosine"):
        if key in fidelity:
            label = key + (" (primary)" if key == fidelity.get("primary") else "")
            rows.append((label, f"{fidelity[key]:.6g}"))
    return (f"<p>{_e(fidelity.get('metric', ''))} on {_e(str(fidelity.get('data', '')))}, "
            f"{fidelity.get('samples', '?')} samples the search never saw.</p>" + _table(rows, header=True))


def _layers(layers: dict) -> str:
    names = list(layers)
    row, label = 22, max([len(n) for n in names] + [8]) * 6.5
    bar = _WIDTH - label - 140
    height = row * len(names) + 24
    items = [f"<svg width='{_WIDTH}' height='{height}' role='img' aria-label='sparsity and bits per layer'>"]
    for i, name in enumerate(names):
        y = 18 + i * row
        sparsity, bits = layers[name].get("sparsity", 0.0), layers[name].get("bits")
        items.append(f"<text x='0' y='{y + 12}'>{_e(name)}</text>")
        items.append(f"<rect x='{label}' y='{y}' width='{bar:.0f}' height='14' fill='#eee'/>")
        items.append(f"<rect x='{label}' y='{y}' width='{bar * sparsity:.1f}' height='14' "
                     f"fill='{_COLORS['sparsity']}'/>")
        items.append(f"<text x='{label + bar + 6:.0f}' y='{y + 12}'>{sparsity:.3f}"
                     + (f" · {bits} bits" if bits else "") + "</text>")
    items.append(f"<text x='{label}' y='12'>fraction of zeros (bar) · bits per surviving weight</text></svg>")
    return "".join(items)


def _trajectory(trajectory: list[dict]) -> str:
    if not trajectory:
        return "<p class='note'>No search trajectory (a baseline method, or nothing to search).</p>"
    xs = [r["sparsity"] for r in trajectory]
    ys = [r["divergence"] for r in trajectory]
    left, top, width, height = 60, 10, _WIDTH - 80, 220
    x_max, y_max = max(max(xs), 1e-9), max(max(ys), 1e-12)
    points = " ".join(f"{left + width * x / x_max:.1f},{top + height - height * y / y_max:.1f}" for x, y in zip(xs, ys))
    return (f"<svg width='{_WIDTH}' height='{height + 50}' role='img' aria-label='divergence against sparsity'>"
            f"<rect x='{left}' y='{top}' width='{width}' height='{height}' fill='none' stroke='#ccc'/>"
            f"<polyline points='{points}' fill='none' stroke='{_COLORS['line']}' stroke-width='1.5'/>"
            f"<text x='{left}' y='{top + height + 16}'>0</text>"
            f"<text x='{left + width - 40}' y='{top + height + 16}'>{x_max:.3f}</text>"
            f"<text x='{left + width / 2 - 40}' y='{top + height + 34}'>sparsity reached</text>"
            f"<text x='0' y='{top + 10}'>{y_max:.3g}</text><text x='0' y='{top + height}'>0</text>"
            f"<text x='0' y='{top + height / 2}'>divergence</text></svg>"
            f"<p class='note'>{len(trajectory)} generations; divergence of the student from the original on the "
            f"calibration data after each.</p>")


def _sizes(container: dict) -> str:
    sections, totals = container["sections"], container["totals"]
    parts = {"header+index+graph": sections["header"] + sections["index"] + sections["graph"],
             "masks": totals["mask"], "symbols": totals["symbols"], "tables": totals["tables"], "raw": totals["raw"]}
    total = max(container["bytes"], 1)
    items, x = [f"<svg width='{_WIDTH}' height='70' role='img' aria-label='container size breakdown'>"], 0.0
    for name, size in parts.items():
        width = _WIDTH * size / total
        items.append(f"<rect x='{x:.1f}' y='0' width='{width:.1f}' height='24' fill='{_COLORS[name]}'>"
                     f"<title>{name}: {size:,} bytes</title></rect>")
        x += width
    legend = " ".join(f"<tspan fill='{_COLORS[n]}'>■</tspan> {n} {s:,}" for n, s in parts.items())
    items.append(f"<text x='0' y='44'>{legend}</text></svg>")
    bounds = (f"<p class='note'>Masks {totals['mask']:,} bytes against their order-0 bound "
              f"{totals['mask_bound']:,.0f}; symbols {totals['symbols']:,} against {totals['symbols_bound']:,.0f}."
              "</p>")
    return "".join(items) + bounds


def _table(rows: list[tuple[str, str]], header: bool = False) -> str:
    body = []
    for i, (key, value) in enumerate(rows):
        cell = "th" if header and i == 0 else "td"
        body.append(f"<tr><{cell}>{_e(key)}</{cell}><{cell}>{_e(value)}</{cell}></tr>")
    return "<table>" + "".join(body) + "</table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
