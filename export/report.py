"""The human-readable export report (export_report.md) rendered from a bundle manifest."""
from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def render_report(manifest: dict[str, Any]) -> str:
    """Markdown: one row per artifact (passed, failed-verification, failed) plus the sets used."""
    gate = manifest.get("gate", {})
    source = manifest["source"]
    lines = [f"# Export report: {source['run']}", "", f"created {manifest['created']}", "",
             f"Gate: top-1 agreement >= {_pct(gate.get('min_agreement'))}, Score drop <= "
             f"{100 * gate.get('max_score_drop', 0):.1f} pt, on held-out windows "
             f"({source['verification_set'].get('purpose', 'verification')}); it decides pass/fail and the "
             "default artifact."]
    if source.get("report_set"):
        lines[-1] += " The test-split columns are reported only: they never gate nor choose the default."
    lines += ["", "| artifact | status | size MB | export s | windows | top-1 agreement | max logit diff | "
              "mean logit diff | Score delta | macro-F1 delta | test windows | test agreement | test Score delta |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for art in manifest["artifacts"]:
        v = art["verification"]
        t = v.get("report_test") or {}
        score = f"{100 * v['score_delta']:+.1f} pt" if "score_delta" in v else "n/a"
        f1 = f"{100 * v['macro_f1_delta']:+.1f} pt" if "macro_f1_delta" in v else "n/a"
        t_score = f"{100 * t['score_delta']:+.1f} pt" if "score_delta" in t else "n/a"
        lines.append(f"| {art['name']} | {art['status']} | {art['size_bytes'] / 1e6:.2f} | "
                     f"{art.get('export_seconds', 'n/a')} | {v.get('windows', 'n/a')} | {_pct(v.get('top1_agreement'))} | "
                     f"{v.get('max_logit_diff', float('nan')):.2e} | {v.get('mean_logit_diff', float('nan')):.2e} | "
                     f"{score} | {f1} | {t.get('windows', 'n/a')} | {_pct(t.get('top1_agreement'))} | {t_score} |")
    for f in manifest.get("failed_artifacts", []):
        lines.append(f"| {f['name']} | failed | - | - | - | - | - | - | - | - | - | - | - |")
    if manifest.get("failed_artifacts"):
        lines += ["", "Failed to build:"] + [f"- {f['name']}: {f['reason']}" for f in manifest["failed_artifacts"]]
    calib = manifest.get("calibration")
    if calib:
        lines += ["", f"Static INT8 calibrated on {calib['representative_windows']} representative windows "
                  f"(class counts {calib.get('class_counts')}, {calib['provenance'].get('split', '?')} split); "
                  f"{calib['windows']} of them ship in {calib['file']} for TensorRT INT8 on the target."]
    lines += ["", f"Default artifact: {manifest['default_artifact']}"]
    return "\n".join(lines) + "\n"
