"""The exam report: one self-contained HTML page (and a PNG) a clinician or bench tester looks at.

Per site: the verdict, a spectrogram of each recording with the timeline of window decisions and
signal quality under it, the evidence counts and a table of every window. No network is needed:
CSS is inline, figures are PNG data URIs, no fonts or scripts are loaded. Needs matplotlib (the
``report`` extra: ``pip install 'stethoedge[report]'``); without it ``ReportError`` says so.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from stethoedge.runtime.errors import StethoedgeError
from stethoedge.runtime.exam import ExamVerdict, SiteResult

__all__ = ["ReportError", "require_matplotlib", "exam_png", "exam_html", "DECISION_COLOURS"]

#: Colour of each decision in the timelines (and the HTML legend).
DECISION_COLOURS = {"normal": "#4caf50", "crackle": "#e53935", "wheeze": "#1e88e5", "both": "#8e24aa",
                    "uncertain": "#9e9e9e", "poor_quality": "#424242"}
VERDICT_COLOURS = {"normal": "#2e7d32", "adventitious": "#c62828", "inconclusive": "#616161",
                   "poor_quality": "#424242", "crackle": "#c62828", "wheeze": "#1565c0", "both": "#6a1b9a",
                   "error": "#000000"}
MAX_SPECTROGRAM_S = 60.0  # longer recordings: the first minute is drawn (the timeline covers it all)


class ReportError(StethoedgeError):
    """The report cannot be made (matplotlib missing)."""


def require_matplotlib() -> Any:
    """Import matplotlib with the headless Agg backend, or raise ReportError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("the exam report needs matplotlib: pip install 'stethoedge[report]'") from None
    return plt


def _audio(path: str) -> tuple[np.ndarray, int] | None:
    from stethoedge.runtime.audio_io import load_audio

    try:
        a = load_audio(path, 16000)
    except StethoedgeError:
        return None
    return a.samples[: int(MAX_SPECTROGRAM_S * a.sample_rate)], a.sample_rate


def _colour(w: dict[str, Any]) -> str:
    key = w["label"] if w["label"] in DECISION_COLOURS else (w["abstain_reason"] or "uncertain")
    if w["abstained"]:
        key = "poor_quality" if w["abstain_reason"] == "poor_quality" else "uncertain"
    return DECISION_COLOURS.get(key, "#9e9e9e")


def _draw_recording(fig: Any, gs: Any, site: SiteResult, path: str) -> None:
    """Spectrogram of ``path`` on top, its window decisions and quality below."""
    ax = fig.add_subplot(gs[0])
    tl = fig.add_subplot(gs[1], sharex=ax)
    got = _audio(path)
    windows = [w for w in site.windows if w["recording"] == path]
    end = max([w["end_s"] for w in windows] + [1.0])
    if got is not None and got[0].size >= 256:
        samples, rate = got
        with np.errstate(divide="ignore"):  # digital silence: log10(0) is -inf, drawn as the floor
            ax.specgram(samples, NFFT=512, Fs=rate, noverlap=384, cmap="magma", vmin=-150)
        ax.set_ylim(0, 4000)
        ax.set_facecolor("black")  # digital silence (-inf dB) is drawn as the darkest colour, not white
        end = max(end, samples.size / rate)
    else:
        ax.text(0.5, 0.5, "audio unreadable", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("Hz")
    ax.set_title(f"{site.site}: {path.rsplit('/', 1)[-1]}", fontsize=9, loc="left")
    ax.tick_params(labelbottom=False)
    # Timeline: row 1 = decision of each window (its newest 2 s: what was decided then), row 0 = quality.
    for i, w in enumerate(windows):
        left = w["end_s"] - min(2.0, max(w["end_s"] - w["start_s"], 0.1)) if i == 0 else windows[i - 1]["end_s"]
        width = max(w["end_s"] - left, 0.1)
        tl.barh(1, width, left=left, color=_colour(w), edgecolor="white", height=0.8)
        ok = w["quality"] in ("ok", "unchecked") and not (w["abstained"] and w["abstain_reason"] == "poor_quality")
        tl.barh(0, width, left=left, color="#a5d6a7" if ok else "#ffb74d", edgecolor="white", height=0.8)
        if w["evidence"]:
            tl.text(left + width / 2, 1, "/".join(s[0].upper() for s in w["evidence"]), ha="center", va="center",
                    fontsize=7, color="white")
    tl.set_yticks([0, 1], ["quality", "decision"], fontsize=8)
    tl.set_ylim(-0.5, 1.5)
    tl.set_xlim(0, end)
    tl.set_xlabel("s")


def _site_figure(plt: Any, site: SiteResult, title: str | None = None) -> Any:
    recs = [p for p in site.recordings if p not in {e.split(":", 1)[0] for e in site.errors}] or site.recordings[:1]
    fig = plt.figure(figsize=(10, 2.6 * len(recs) + (0.5 if title else 0)), dpi=90)
    outer = fig.add_gridspec(len(recs), 1, hspace=0.45)
    for k, path in enumerate(recs):
        inner = outer[k].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        _draw_recording(fig, inner, site, path)
    if title:
        fig.suptitle(title)
    return fig


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def exam_png(verdict: ExamVerdict) -> bytes:
    """One PNG of the whole exam: the verdict as the title, every site's spectrograms and timelines."""
    plt = require_matplotlib()
    recs = sum(max(1, len(s.recordings)) for s in verdict.sites)
    fig = plt.figure(figsize=(10, 2.6 * recs + 0.8), dpi=90)
    outer = fig.add_gridspec(recs, 1, hspace=0.5)
    k = 0
    for site in verdict.sites:
        for path in site.recordings or [""]:
            inner = outer[k].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
            _draw_recording(fig, inner, site, path)
            k += 1
    who = f"patient {verdict.patient}: " if verdict.patient else ""
    fig.suptitle(f"{who}{verdict.label.upper()} — {verdict.summary}", fontsize=10,
                 color=VERDICT_COLOURS.get(verdict.verdict, "black"))
    return _png(plt, fig)


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#212121;max-width:1100px}
h1{font-size:1.4em;margin:0 0 .3em}
.verdict{font-size:1.6em;font-weight:bold;padding:.4em .7em;border-radius:6px;color:#fff;display:inline-block}
.site{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.finding{font-weight:bold;padding:.1em .5em;border-radius:4px;color:#fff}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f5f5f5}.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em 0 .8em}
img{max-width:100%}.err{color:#b71c1c}.small{font-size:.85em;color:#555}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _site_html(plt: Any, site: SiteResult) -> str:
    colour = VERDICT_COLOURS.get(site.finding, "#616161")
    ev = site.evidence
    parts = [f'<section class="site" id="site-{_e(site.site)}"><h2>Site {_e(site.site)} '
             f'<span class="finding" style="background:{colour}">{_e(site.finding)}</span></h2>',
             f"<p>{site.n_usable} of {site.n_windows} windows usable; {site.n_abstained} abstained "
             f"({_e(', '.join(f'{k}: {v}' for k, v in sorted(site.abstained_by_reason.items())) or 'none')}). "
             f"Quality: {_e(', '.join(f'{k} {v}' for k, v in sorted(site.quality_counts.items())) or '—')}.</p>"]
    for sound in ("crackle", "wheeze"):
        e = ev.get(sound, {})
        if e.get("windows"):
            times = ", ".join(f"{a:.0f}–{b:.0f} s" for a, b in e["times"][:12])
            parts.append(f"<p>Evidence of {sound}: {e['windows']} window(s), mean probability "
                         f"{e['mean_probability']:.2f} ({_e(times)})</p>")
    for err in site.errors:
        parts.append(f'<p class="err">error: {_e(err)}</p>')
    if site.windows:
        png = _png(plt, _site_figure(plt, site))
        parts.append(f'<img alt="spectrogram and decision timeline of site {_e(site.site)}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        rows = "".join(
            f"<tr><td>{_e(w['recording'].rsplit('/', 1)[-1])}</td><td>{w['start_s']:.1f}–{w['end_s']:.1f}</td>"
            f"<td style='text-align:left'>{_e(w['label'])}</td><td>{w['confidence']:.2f}</td>"
            f"<td style='text-align:left'>{_e(w['quality'])}</td><td>{'yes' if w['abstained'] else ''}</td>"
            f"<td style='text-align:left'>{_e('/'.join(w['evidence']))}</td></tr>" for w in site.windows)
        parts.append("<details><summary>every window</summary><table><tr><th>recording</th><th>s</th>"
                     "<th>decision</th><th>conf.</th><th>quality</th><th>abstained</th><th>evidence</th></tr>"
                     f"{rows}</table></details>")
    parts.append("</section>")
    return "\n".join(parts)


def exam_html(verdict: ExamVerdict, title: str = "stethoedge examination") -> str:
    """The self-contained HTML report of one exam (inline CSS, PNG data URIs; nothing fetched)."""
    plt = require_matplotlib()
    colour = VERDICT_COLOURS.get(verdict.verdict, "#616161")
    r = verdict.rules
    legend = "".join(f'<span class="swatch" style="background:{c}"></span>{_e(k)}' for k, c in DECISION_COLOURS.items())
    sites = "\n".join(_site_html(plt, s) for s in verdict.sites)
    overview = "".join(f"<tr><td style='text-align:left'><a href='#site-{_e(s.site)}'>{_e(s.site)}</a></td>"
                       f"<td style='text-align:left'>{_e(s.finding)}</td><td>{s.n_usable}/{s.n_windows}</td>"
                       f"<td>{s.evidence.get('crackle', {}).get('windows', 0)}</td>"
                       f"<td>{s.evidence.get('wheeze', {}).get('windows', 0)}</td></tr>" for s in verdict.sites)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<style>{_CSS}</style></head><body>
<h1>{_e(title)}{' — patient ' + _e(verdict.patient) if verdict.patient else ''}</h1>
<p><span class="verdict" id="verdict" style="background:{colour}">{_e(verdict.label.replace('_', ' ').upper())}</span></p>
<p id="summary">{_e(verdict.summary)}</p>
<table><tr><th>site</th><th>finding</th><th>usable windows</th><th>crackle evidence</th><th>wheeze evidence</th></tr>
{overview}</table>
<p class="small">Rules: a usable (not abstained) window is evidence of a sound when P(sound)+P(both) &ge;
{r.evidence_prob:g}; a site has the sound with &ge; {r.min_evidence_windows} evidence windows and &ge;
{r.min_evidence_fraction:.0%} of its usable windows as evidence; a site with fewer
than {r.min_usable_windows} usable windows gives no answer. Abstained windows (poor quality, uncertain) never count
as evidence. Timeline colours:{legend}; quality row: green ok/unchecked, orange poor. Not a diagnosis.</p>
{sites}
</body></html>
"""
