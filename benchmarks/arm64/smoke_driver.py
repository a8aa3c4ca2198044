"""The arm64 smoke test's driver: the same script runs on x86-64 and inside the emulated arm64 system.

Run by ``benchmarks/arm64_smoke.sh`` (and ``benchmarks/tflite_runtime_check.sh``) with the
python of a venv that has the stethoedge wheel installed; it only needs the runtime (no torch).

    classify  OUT.json --bundle NAME=DIR ... --audio FILE ...
              Every artifact of every bundle is opened and must pass the start-up self-test (feature
              parity + logits). The ``--engine`` artifacts classify every recording through the stream
              engine (``stethoedge classify`` defaults: 2 s hop, first decision at 2 s, mean:3 smoothing),
              recording each window's features, logits and probabilities; every other artifact runs on
              every ``--stride``-th of those feature windows.
    bridge    OUT.json --bundle DIR --audio WAV
              The recording as a stethoscope sends it (16 kHz int16, cut to whole hops) through
              ``stethoedge listen --replay --fast`` and ``stethoedge listen --bridge PTY``, the device side
              played by firmware_bridge.device_simulator over a pty pair made here (paced in real time);
              the RESULT frames the host sends back are recorded and must match its decisions, and the
              bridge must decide exactly what the replay decided.
    compare   REF.json GOT.json ... [--bridge B.json --bridge-ref A.json]
              Self-test verdicts and every window's logits/probabilities/labels against the reference,
              as Markdown tables; exit 1 on any difference over an artifact's tolerance.

Child processes (``listen``) start through ``$STETHOEDGE_EXEC_PREFIX`` when set: without binfmt_misc
the kernel cannot exec an arm64 binary, so the smoke script sets it to the qemu-user binary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HOP_S, MIN_S = 2.0, 2.0  # the CLI's defaults (stethoedge classify / listen)
VERSIONS = ("stethoedge", "numpy", "scipy", "soundfile", "soxr", "onnxruntime", "ai-edge-litert", "tflite-runtime")


def _versions() -> dict:
    out = {"python": platform.python_version(), "machine": platform.machine(), "platform": platform.platform(),
           "qemu_cpu": os.environ.get("QEMU_CPU")}
    for dist in VERSIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _say(*parts: object) -> None:
    print(*parts, flush=True)


class Recording:
    """A backend wrapper that keeps every window's features and logits (the engine calls ``run``)."""

    def __init__(self, backend) -> None:
        self.inner, self.name, self.artifact = backend, backend.name, backend.artifact
        self.features: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    def run(self, features: np.ndarray) -> np.ndarray:
        out = self.inner.run(features)
        self.features.append(np.array(features[0], dtype=np.float32))
        self.logits.append(np.array(out[0], dtype=np.float32))
        return out


def _library(backend) -> str:
    lib = getattr(backend, "library", None)
    if lib:  # the LiteRT backend says which interpreter loaded
        return f"{lib} {getattr(backend, 'version', '')}".strip()
    if backend.name == "onnxruntime":
        return f"onnxruntime {metadata.version('onnxruntime')}"
    return backend.name


def open_checked(bundle, name: str) -> tuple[object | None, dict]:
    """Open ``name`` with the start-up checks of ``open_backend(selftest=True)``; return (backend, verdict)."""
    from stethoedge.runtime.backends import check_feature_parity, open_backend, run_selftest
    from stethoedge.runtime.errors import StethoedgeError

    art = bundle.artifacts[name]
    verdict = {"artifact": name, "format": art.format, "precision": art.precision, "status": art.status,
               "tolerance": art.tolerance}
    t0 = time.perf_counter()
    try:
        backend = open_backend(bundle, name, "auto", allow_failed=True, selftest=False)
    except StethoedgeError as exc:
        verdict.update(selftest="unavailable", message=str(exc))
        return None, verdict
    verdict["library"] = _library(backend)
    try:
        verdict["feature_diff"] = check_feature_parity(bundle)
        verdict["selftest_diff"] = run_selftest(bundle, backend)
        verdict["selftest"] = "passed"
    except StethoedgeError as exc:
        verdict.update(selftest="refused", message=str(exc))
        got = np.asarray(backend.run(bundle.selftest.features), dtype=np.float32)  # how wrong, for the record
        if got.shape == bundle.selftest.logits.shape:
            verdict["selftest_diff"] = float(np.max(np.abs(got - bundle.selftest.logits)))
        backend = None
    verdict["open_seconds"] = round(time.perf_counter() - t0, 2)
    return backend, verdict


def _window(start: float, end: float, labels: list[str], logits: np.ndarray) -> dict:
    from stethoedge.runtime.engine import softmax

    probs = softmax(logits.astype(np.float64))
    return {"start_s": round(start, 4), "end_s": round(end, 4), "label": labels[int(np.argmax(probs))],
            "probs": [float(p) for p in probs], "logits": [float(v) for v in logits]}


def classify_engine(bundle, backend, audio: str) -> tuple[list[dict], np.ndarray]:
    """One recording through the stream engine (``stethoedge classify`` defaults); windows + features."""
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource
    from stethoedge.runtime.stream import StreamConfig, StreamEngine

    rec = Recording(backend)
    clf = Classifier(bundle, rec)
    engine = StreamEngine(clf, StreamConfig(hop_s=HOP_S, min_s=MIN_S))
    source = FileSource(audio)
    windows = []
    try:
        for r in engine.run(source):
            w = _window(r.start_s, r.end_s, bundle.labels, rec.logits[-1])  # run() came just before the yield
            w["engine_probs"] = [float(r.probabilities[k]) for k in bundle.labels]
            w["smoothed_label"] = r.smoothed_label
            windows.append(w)
    finally:
        source.close()
    if len(rec.features) != len(windows):
        raise RuntimeError(f"{audio}: {len(rec.features)} inferences for {len(windows)} windows")
    return windows, np.stack(rec.features)


def _rec_name(audio: str) -> str:
    path = Path(audio)
    return f"{path.parent.name}/{path.name}" if path.parent.name.startswith("variant") else path.name


def cmd_classify(args: argparse.Namespace) -> int:
    from stethoedge.runtime.bundle import load_bundle

    out = {"versions": _versions(), "hop_s": HOP_S, "min_s": MIN_S, "stride": args.stride, "bundles": {}}
    feats: dict[str, np.ndarray] = {}
    # Engine windows (times + features) per (feature spec, recording): bundles with the same front end share them.
    engine_windows: dict[tuple[str, str], tuple[list[dict], np.ndarray]] = {}
    t_all = time.perf_counter()
    items = [(b, False) for b in args.bundle] + [(b, True) for b in args.selftest_bundle or []]
    for item, selftest_only in items:
        bname, _, path = item.partition("=")
        bundle = load_bundle(path)
        spec_key = json.dumps(bundle.manifest["feature_spec"], sort_keys=True)
        entry = {"path": path, "labels": bundle.labels, "default": bundle.manifest["default_artifact"],
                 "artifacts": {}}
        out["bundles"][bname] = entry
        wanted = args.engine.split(",") if bname == items[0][0].partition("=")[0] else []
        engine_arts = [a for a in bundle.artifacts if "all" in wanted or a in wanted
                       or ("default" in wanted and a == entry["default"])]
        order = engine_arts + [a for a in bundle.artifacts if a not in engine_arts]
        for name in order:
            backend, verdict = open_checked(bundle, name)
            _say(f"[{bname}] {name:<20} self-test {verdict['selftest']}"
                 + (f" (max logit diff {verdict['selftest_diff']:.3g}, tolerance {verdict['tolerance']:.3g},"
                    f" {verdict.get('library')})" if "selftest_diff" in verdict else "")
                 + (f": {verdict['message']}" if "message" in verdict else ""))
            verdict["recordings"] = {}
            entry["artifacts"][name] = verdict
            if backend is None or selftest_only:
                continue
            t0 = time.perf_counter()
            n, how = 0, "stream engine"
            for audio in args.audio:
                rec = _rec_name(audio)
                key = (spec_key, rec)
                if name in engine_arts or key not in engine_windows:
                    windows, features = classify_engine(bundle, backend, audio)
                    if key not in engine_windows:
                        engine_windows[key] = (windows, features)
                        feats[f"{bname}|{rec}"] = features
                else:  # the same feature windows as an engine pass, every stride-th
                    ref_windows, features = engine_windows[key]
                    pick = list(range(0, len(ref_windows), args.stride))
                    logits = np.asarray(backend.run(features[pick]), dtype=np.float32)
                    windows = [_window(ref_windows[i]["start_s"], ref_windows[i]["end_s"], bundle.labels, lg)
                               for i, lg in zip(pick, logits)]
                    how = f"features of every {args.stride}th engine window" if args.stride > 1 else \
                        "the engine windows' features"
                verdict["recordings"][rec] = windows
                n += len(windows)
            verdict["windows"] = n
            verdict["seconds"] = round(time.perf_counter() - t0, 1)
            _say(f"[{bname}] {name:<20} {n} windows of {len(args.audio)} recordings in {verdict['seconds']} s ({how})")
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    Path(args.out).write_text(json.dumps(out, indent=1))
    if args.features:
        np.savez(args.features, **feats)
    return 0


# -- bridge and replay ---------------------------------------------------------------------------------

def _child(argv: list[str]) -> list[str]:
    prefix = os.environ.get("STETHOEDGE_EXEC_PREFIX", "").split()
    return prefix + argv


def _jsonl_windows(path: Path, labels: list[str]) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"start_s": round(r["start_s"], 4), "end_s": round(r["end_s"], 4), "label": r["label"],
             "probs": [float(r["probabilities"][k]) for k in labels], "skipped_before": r.get("skipped_before", 0)}
            for r in rows]


def cmd_bridge(args: argparse.Namespace) -> int:
    from stethoedge.firmware_bridge.device_simulator import DeviceSimulator, load_pcm16
    from stethoedge.firmware_bridge.links import PtyPair
    from stethoedge.firmware_bridge.messages import Result
    from stethoedge.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    labels = bundle.labels
    work = Path(args.out).with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out: dict = {"versions": _versions(), "audio": args.audio, "bundle": args.bundle}

    # The recording as the stethoscope sends it: 16 kHz int16. Cut to a whole number of hops: a stream that
    # ends between two hops gets one last (tail) window after the device's last frame (--keep-tail streams it,
    # and listen --bridge sends that window's RESULT too); the cut keeps the runs comparable with earlier ones.
    pcm = load_pcm16(args.audio)
    hop = int(HOP_S * 16000)
    if not args.keep_tail:
        pcm = pcm[: len(pcm) // hop * hop]
    wav = work / "stethoscope-16k.wav"
    import soundfile as sf

    sf.write(str(wav), pcm, 16000, subtype="PCM_16")
    out["samples"] = int(len(pcm))
    _say(f"input: {args.audio} as 16 kHz int16, {len(pcm) / 16000:.2f} s")

    # 1. listen --replay (a file as if live; --fast: as fast as possible, through the capture thread + ring)
    replay_jsonl = work / "replay.jsonl"
    replay_jsonl.unlink(missing_ok=True)
    t0 = time.perf_counter()
    p = subprocess.run(_child([sys.executable, "-m", "stethoedge", "listen", args.bundle, "--replay", str(wav),
                               "--fast", "--jsonl", str(replay_jsonl)]),
                       capture_output=True, text=True, env=env, timeout=args.timeout)
    _say(f"listen --replay: exit {p.returncode} in {time.perf_counter() - t0:.1f} s")
    _say("\n".join("  " + line for line in p.stdout.strip().splitlines()))
    if p.returncode != 0:
        _say(p.stderr[-3000:])
        return 1
    out["replay"] = _jsonl_windows(replay_jsonl, labels)

    # 2. listen --bridge over a pty pair; this process plays the stethoscope (device_simulator)
    bridge_jsonl = work / "bridge.jsonl"
    bridge_jsonl.unlink(missing_ok=True)
    pty = PtyPair()
    listen = subprocess.Popen(_child([sys.executable, "-m", "stethoedge", "listen", args.bundle, "--bridge",
                                      pty.slave_name, "--baud", "921600", "--jsonl", str(bridge_jsonl),
                                      "--idle-timeout", "3"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results: list[tuple[int, float, int]] = []

    def on_host(seq: int, msg: object) -> None:
        if isinstance(msg, Result):
            results.append((msg.label_index, msg.confidence, msg.window_ms))

    t0 = time.perf_counter()
    try:
        sim = DeviceSimulator(pty.link(), pcm, 16000, realtime=True, wait_start=True,
                              start_timeout=args.timeout, on_host_message=on_host)
        report = sim.run()
        # The device keeps listening for RESULT frames until the host has finished (an emulated host
        # decides the last window seconds after the audio ended), then a moment longer.
        deadline = time.monotonic() + args.timeout
        while listen.poll() is None and time.monotonic() < deadline:
            sim.poll_host(0.05)
        end = time.monotonic() + args.linger
        while time.monotonic() < end:
            sim.poll_host(0.05)
        stdout, stderr = listen.communicate(timeout=args.timeout)
    finally:
        pty.close()
        if listen.poll() is None:
            listen.kill()
    _say(f"listen --bridge {pty.slave_name}: exit {listen.returncode} in {time.perf_counter() - t0:.1f} s; "
         f"device sent {report.frames_sent} frames / {report.samples_sent} samples, received "
         f"{len(results)} RESULT frames")
    _say("\n".join("  " + line for line in stdout.strip().splitlines()))
    if listen.returncode != 0:
        _say(stderr[-3000:])
        return 1
    out["bridge"] = _jsonl_windows(bridge_jsonl, labels)
    out["bridge_results"] = [{"label": labels[i], "confidence": c, "end_s": ms / 1000} for i, c, ms in results]
    out["bridge_stdout"] = stdout
    # The stethoscope got one RESULT per decision, with the decision's label and window end.
    sent = [(w["label"], w["end_s"]) for w in out["bridge"]]
    back = [(r["label"], round(r["end_s"], 3)) for r in out["bridge_results"]]
    out["bridge_results_match"] = [(lab, round(e, 3)) for lab, e in sent] == back
    _say(f"RESULT frames match the decisions: {out['bridge_results_match']}")
    # Same samples both ways: the bridge must decide exactly what the replay decided.
    pairs = _match(out["replay"], out["bridge"])
    out["bridge_equals_replay"] = len(pairs) == len(out["replay"]) == len(out["bridge"]) and all(
        r["label"] == b["label"] and max(abs(x - y) for x, y in zip(r["probs"], b["probs"])) < 1e-6 for r, b in pairs)
    _say(f"listen --bridge decided exactly what listen --replay decided: {out['bridge_equals_replay']}")
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0 if out["bridge_results_match"] and out["bridge_equals_replay"] else 1


# -- comparison -----------------------------------------------------------------------------------------

def _match(ref: list[dict], got: list[dict]) -> list[tuple[dict, dict]]:
    by_time = {(w["start_s"], w["end_s"]): w for w in ref}
    return [(by_time[(w["start_s"], w["end_s"])], w) for w in got if (w["start_s"], w["end_s"]) in by_time]


def _pair_stats(pairs: list[tuple[dict, dict]], key: str = "logits") -> dict:
    dp = max((max(abs(a - b) for a, b in zip(r["probs"], g["probs"])) for r, g in pairs), default=0.0)
    dl = max((max(abs(a - b) for a, b in zip(r[key], g[key])) for r, g in pairs), default=0.0) \
        if pairs and key in pairs[0][0] else None
    flips = []
    for r, g in pairs:
        if r["label"] != g["label"]:
            top2 = sorted(r["probs"])[-2:]
            flip = {"end_s": r["end_s"], "x86": r["label"], "arm64": g["label"], "x86_margin": top2[1] - top2[0]}
            if key in r and key in g:  # explained if the logit difference can close the top-two logit gap
                z = sorted(r[key])[-2:]
                flip["x86_logit_margin"] = z[1] - z[0]
                flip["dlogit"] = max(abs(a - b) for a, b in zip(r[key], g[key]))
                flip["explained"] = flip["x86_logit_margin"] <= 2 * flip["dlogit"]
            flips.append(flip)
    return {"windows": len(pairs), "same_label": len(pairs) - len(flips), "max_dp": dp, "max_dlogit": dl,
            "flips": flips}


def compare(ref: dict, got: dict, features: tuple[dict, dict] | None = None, subset: bool = False,
            allow_refusals: bool = False) -> tuple[list[dict], list[dict], bool]:
    """(self-test rows, window rows per bundle/artifact/recording, all within tolerance).

    ``subset``: ``got`` ran fewer windows/recordings than ``ref`` (quick mode, tflite-runtime).
    ``allow_refusals``: a self-test that refuses where ``ref``'s passed is reported, not a failure
    (another interpreter: the self-test exists to refuse it); what passes must still match.
    """
    st_rows, rows, ok = [], [], True
    for bname, bref in ref["bundles"].items():
        bgot = got["bundles"].get(bname)
        if bgot is None:
            if not subset:
                rows.append({"bundle": bname, "artifact": "-", "recording": "-", "verdict": "MISSING"})
                ok = False
            continue
        for aname, aref in bref["artifacts"].items():
            agot = bgot["artifacts"].get(aname)
            if agot is None:
                if not subset:
                    st_rows.append({"bundle": bname, "artifact": aname, "verdict": "MISSING"})
                    ok = False
                continue
            same = agot["selftest"] == aref["selftest"]
            if same:
                verdict = "same verdict" if agot["selftest"] == "passed" else f"{agot['selftest']} on both"
            elif allow_refusals and agot["selftest"] != "passed":
                verdict = f"{agot['selftest']} here only (reported)"
            else:
                verdict = "DIFFERENT VERDICT"
                ok = False
            st_rows.append({"bundle": bname, "artifact": aname, "precision": aref["precision"],
                            "tolerance": aref["tolerance"], "ref": aref, "got": agot, "verdict": verdict})
            if agot["selftest"] != "passed" or aref["selftest"] != "passed":
                continue
            for rec, wref in aref.get("recordings", {}).items():
                wgot = agot["recordings"].get(rec)
                if wgot is None:
                    if not subset:
                        rows.append({"bundle": bname, "artifact": aname, "recording": rec, "verdict": "MISSING"})
                        ok = False
                    continue
                pairs = _match(wref, wgot)
                s = _pair_stats(pairs)
                tol = aref["tolerance"]
                complete = bool(pairs) and len(pairs) == len(wgot) and (subset or len(wgot) == len(wref))
                within = s["max_dlogit"] is not None and s["max_dlogit"] <= tol
                # A changed label fails an artifact that passed export verification (what the runtime runs
                # by default). On a failed-verification one (runs only with --allow-degraded) it is
                # reported when the measured logit difference explains it (x86's top-two gap <= 2 x diff).
                degraded = aref.get("status", "passed") != "passed"
                flips_ok = not s["flips"] or (degraded and all(f.get("explained") for f in s["flips"]))
                good = complete and within and flips_ok
                ok &= good
                fd = None
                if features is not None and f"{bname}|{rec}" in features[0] and f"{bname}|{rec}" in features[1]:
                    fa, fb = features[0][f"{bname}|{rec}"], features[1][f"{bname}|{rec}"]
                    fd = float(np.max(np.abs(fa - fb))) if fa.shape == fb.shape else float("nan")
                rows.append({"bundle": bname, "artifact": aname, "recording": rec, "windows": s["windows"],
                             "same_label": s["same_label"], "max_dp": s["max_dp"], "max_dlogit": s["max_dlogit"],
                             "tolerance": tol, "feature_diff": fd, "flips": s["flips"],
                             "verdict": ("ok" if not s["flips"] else "ok (label flips reported: degraded artifact)")
                             if good else ("LABELS DIFFER" if not flips_ok else
                                           "OVER TOLERANCE" if not within else "WINDOWS DIFFER")})
    return st_rows, rows, ok


def print_selftests(title: str, st_rows: list[dict]) -> None:
    _say(f"\n{title}")
    _say("| bundle | artifact | precision | x86-64 self-test (max logit diff) | this platform (max logit diff, "
         "interpreter) | tolerance | verdict |")
    _say("|---|---|---|---|---|---|---|")
    for r in st_rows:
        if "ref" not in r:
            _say(f"| {r['bundle']} | {r['artifact']} | | | | | {r['verdict']} |")
            continue
        a, b = r["ref"], r["got"]
        _say(f"| {r['bundle']} | {r['artifact']} | {r['precision']} | {a['selftest']} ({_fmt(a.get('selftest_diff'))})"
             f" | {b['selftest']} ({_fmt(b.get('selftest_diff'))}, {b.get('library', '-')}) | {r['tolerance']:.3g} | "
             f"{r['verdict']} |")


def _fmt(v: object, spec: str = ".1e") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def print_table(title: str, rows: list[dict]) -> None:
    _say(f"\n{title}")
    _say(f"| bundle | artifact | recording | windows | same label | max abs dprob | max abs dlogit | tolerance "
         f"(logit) | max abs dfeature | verdict |")
    _say("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = f"{r['same_label']}/{r['windows']}" if "windows" in r else "-"
        _say(f"| {r['bundle']} | {r['artifact']} | {r['recording']} | {r.get('windows', '-')} | {same} | "
             f"{_fmt(r.get('max_dp'))} | {_fmt(r.get('max_dlogit'))} | {_fmt(r.get('tolerance'), '.3g')} | "
             f"{_fmt(r.get('feature_diff'))} | {r['verdict']} |")
        for f in r.get("flips", []):
            _say(f"|  | | label flip at {f['end_s']} s | | {f['x86']} -> {f['arm64']} | x86 top-2 prob gap "
                 f"{f['x86_margin']:.2f} | window dlogit {_fmt(f.get('dlogit'), '.2f')} vs x86 top-2 logit gap "
                 f"{_fmt(f.get('x86_logit_margin'), '.2f')} | | | |")


def summary_rows(rows: list[dict]) -> list[dict]:
    """One row per (bundle, artifact): all recordings together."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["bundle"], r["artifact"])
        s = out.setdefault(key, {"bundle": r["bundle"], "artifact": r["artifact"], "recording": "all", "windows": 0,
                                 "same_label": 0, "max_dp": 0.0, "max_dlogit": 0.0, "tolerance": r.get("tolerance"),
                                 "feature_diff": None, "flips": [], "verdict": "ok"})
        if "windows" not in r:
            s.update(recording=r["recording"], verdict=r["verdict"], windows=None)
            s.pop("same_label", None)
            continue
        s["windows"] += r["windows"]
        s["same_label"] += r["same_label"]
        s["max_dp"] = max(s["max_dp"], r["max_dp"])
        s["max_dlogit"] = max(s["max_dlogit"], r["max_dlogit"] or 0.0)
        if r["feature_diff"] is not None:
            s["feature_diff"] = max(s["feature_diff"] or 0.0, r["feature_diff"])
        s["flips"] += [{**f, "end_s": f"{r['recording']} {f['end_s']}"} for f in r["flips"]]
        if r["verdict"] != "ok" and not s["verdict"].isupper():
            s["verdict"] = r["verdict"]
    for s in out.values():
        if s.get("windows") is None:
            s.pop("windows")
    return list(out.values())


def _describe(v: dict) -> str:
    libs = ", ".join(f"{k} {v[k]}" for k in ("numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime") if v.get(k))
    cpu = f" (QEMU_CPU={v['qemu_cpu']})" if v.get("qemu_cpu") else ""
    return f"{v['machine']}{cpu}, python {v['python']}, {libs}"


def cmd_compare(args: argparse.Namespace) -> int:
    ref = json.loads(Path(args.ref).read_text())
    all_ok = True
    for got_path in args.got:
        got = json.loads(Path(got_path).read_text())
        feats = None
        fa, fb = Path(args.ref).with_suffix(".npz"), Path(got_path).with_suffix(".npz")
        if fa.exists() and fb.exists():
            with np.load(fa) as za, np.load(fb) as zb:
                feats = (dict(za), dict(zb))
        st_rows, rows, ok = compare(ref, got, feats, subset=args.subset, allow_refusals=args.allow_refusals)
        where = _describe(got["versions"])
        title = f"{_describe(ref['versions'])} (reference) vs {where}"
        print_selftests(f"start-up self-tests, {title}", st_rows)
        detail = [r for r in rows if r["bundle"] == args.detail_bundle]
        if detail:
            print_table(f"{title}: bundle {args.detail_bundle!r}, per recording", detail)
        print_table(f"{title}: per artifact, all recordings", summary_rows(rows))
        _say(f"\nRESULT {'PASS' if ok else 'FAIL'}: {where}")
        all_ok &= ok
    for bridge_path in args.bridge or []:
        all_ok &= _compare_bridge(ref, json.loads(Path(bridge_path).read_text()), args)
    return 0 if all_ok else 1


def _compare_bridge(ref: dict, got: dict, args: argparse.Namespace) -> bool:
    """arm64 listen --replay / --bridge against x86's: same windows, labels, probabilities."""
    ok = True
    x86 = json.loads(Path(args.bridge_ref).read_text()) if args.bridge_ref else None
    tol = None
    for b in ref["bundles"].values():  # the replay's artifact is the bundle default
        if Path(b["path"]).resolve().name == Path(got["bundle"]).resolve().name or b["path"] == got["bundle"]:
            tol = b["artifacts"][b["default"]]["tolerance"]
    tol = tol if tol is not None else 1e-3
    _say(f"\nlisten on {got['versions']['machine']} (QEMU_CPU={got['versions']['qemu_cpu']}): {Path(got['audio']).name}")
    _say("| path | windows | x86 windows | same label | max abs dprob vs x86 | verdict |")
    _say("|---|---|---|---|---|---|")
    for kind in ("replay", "bridge"):
        mine = got.get(kind, [])
        theirs = x86.get(kind, []) if x86 else []
        pairs = _match(theirs, mine)
        s = _pair_stats(pairs, key="none")  # JSON lines carry probabilities only: |dp| <= |dlogit| / 2 (softmax)
        skipped = sum(w.get("skipped_before", 0) for w in mine)
        good = bool(pairs) and len(pairs) == len(theirs) == len(mine) and s["same_label"] == s["windows"] \
            and s["max_dp"] <= tol / 2
        ok &= good
        _say(f"| listen --{kind} | {len(mine)} (skipped {skipped}) | {len(theirs)} | {s['same_label']}/{s['windows']} | "
             f"{s['max_dp']:.1e} | {'ok' if good else 'DIFFERS'} |")
    ok &= bool(got.get("bridge_results_match")) and bool(got.get("bridge_equals_replay"))
    _say(f"RESULT frames back to the stethoscope match the decisions: {got.get('bridge_results_match')}; "
         f"the bridge decided exactly what the replay decided: {got.get('bridge_equals_replay')}")
    _say(f"RESULT {'PASS' if ok else 'FAIL'}: listen --replay and --bridge")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("classify")
    p.add_argument("out")
    p.add_argument("--bundle", action="append", default=[], help="NAME=DIR (repeatable)")
    p.add_argument("--audio", nargs="*", default=[])
    p.add_argument("--engine", default="default",
                   help="artifacts of the FIRST --bundle run through the stream engine: all, default or a,b; every "
                        "other artifact runs on the feature windows of an engine pass over the same front end")
    p.add_argument("--stride", type=int, default=4, help="the other artifacts: every stride-th engine window")
    p.add_argument("--features", default=None, help="save the engine windows' features here (.npz)")
    p.add_argument("--selftest-bundle", action="append", help="NAME=DIR: only open every artifact (self-test)")
    p.set_defaults(func=cmd_classify)
    p = sub.add_parser("bridge")
    p.add_argument("out")
    p.add_argument("--bundle", required=True)
    p.add_argument("--audio", required=True)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--linger", type=float, default=1.0,
                   help="device: listen for RESULT frames this long after the host process ended")
    p.add_argument("--keep-tail", action="store_true", help="do not cut the recording to a whole number of hops")
    p.set_defaults(func=cmd_bridge)
    p = sub.add_parser("compare")
    p.add_argument("ref")
    p.add_argument("got", nargs="*")
    p.add_argument("--detail-bundle", default="default", help="print every recording of this bundle")
    p.add_argument("--bridge", action="append", help="arm64 bridge.json (repeatable)")
    p.add_argument("--bridge-ref", default=None, help="x86 bridge.json")
    p.add_argument("--subset", action="store_true", help="GOT ran a subset of REF's recordings/windows")
    p.add_argument("--allow-refusals", action="store_true",
                   help="a self-test refusal where REF passed is reported, not a failure (another interpreter)")
    p.set_defaults(func=cmd_compare)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
