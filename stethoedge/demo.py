"""The main job, end to end on the embedded default data.

simulate a dataset -> train the nano AST (SAM + weighted sampler) -> export a verified ONNX bundle
-> stream-classify a held-out synthetic recording (and a real one if given) -> latency table.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from stethoedge.runtime.errors import StethoedgeError

MARKER = ".stethoedge-demo"


def _prepare(out: Path) -> None:
    """Use ``out`` as the demo's working directory, clearing a previous demo's outputs only."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise StethoedgeError(f"{out} is not empty and not a previous demo directory; choose another --out")
        for name in ("data", "run", "bundle"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("stethoedge demo working directory\n")


def run_demo(out: Path, real_audio: str | None = None, epochs: int = 8, patients: int = 20, preset: str = "nano",
             seed: int = 0) -> dict[str, float]:
    """Run every stage, print what each produced, return the wall time of each stage in seconds."""
    from stethoedge.export.exporter import export_run
    from stethoedge.runtime.bench import bench_bundle, format_bench_table
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource
    from stethoedge.train.simulator import simulate_dataset
    from stethoedge.train.trainer import TrainConfig, train

    _prepare(out)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t
        timings[stage] = time.perf_counter() - t
        print(f"== {stage} done in {timings[stage]:.1f} s\n", flush=True)
        t = time.perf_counter()

    print(f"== 1/5 simulate {patients} patients -> {out / 'data'}", flush=True)
    summary = simulate_dataset(out / "data", n_patients=patients, recordings_per_patient=3, duration_s=20.0, seed=seed)
    print(json.dumps(summary.get("class_counts", {})))
    lap("simulate")

    print(f"== 2/5 train the {preset} AST with SAM and a weighted sampler -> {out / 'run'}", flush=True)
    metrics = train(TrainConfig(data=str(out / "data"), out=str(out / "run"), preset=preset, epochs=epochs, seed=seed))
    test = metrics["test"]
    if test:
        print(f"test (held-out patients): Sp {test['specificity']:.3f} Se {test['sensitivity']:.3f} "
              f"Score {test['score']:.3f} macro-F1 {test['macro_f1']:.3f} (n={test['n']})")
    lap("train")

    print(f"== 3/5 export -> {out / 'bundle'}", flush=True)
    result = export_run(out / "run", out / "bundle", force=True)
    print(result.report)
    lap("export")

    splits = json.loads((out / "run" / "splits.json").read_text())
    wav = next((out / "data").rglob(f"{splits['test'][0]}.wav"))
    clf = Classifier.open(out / "bundle")
    targets = [wav] + ([Path(real_audio)] if real_audio else [])
    print(f"== 4/5 stream-classify {', '.join(str(p) for p in targets)} ({clf.backend.artifact.name})", flush=True)
    for path in targets:
        truth = path.with_suffix(".txt")
        print(f"-- {path.name}" + (f" (annotation: {truth})" if truth.exists() else ""))
        for r in clf.classify(FileSource(path), hop_s=2.0, min_s=2.0):
            probs = " ".join(f"{k}={v:.2f}" for k, v in r.probabilities.items())
            print(f"  {r.start_s:6.2f}-{r.end_s:<6.2f} s  {r.label:<8} {r.confidence:.2f}  {probs}"
                  + ("  (padded)" if r.padded else ""))
    lap("classify")

    print("== 5/5 bench", flush=True)
    print(format_bench_table(bench_bundle(out / "bundle")))
    lap("bench")
    total = sum(timings.values())
    print("stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {total:.1f} s")
    return timings
