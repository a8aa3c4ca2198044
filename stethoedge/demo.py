"""The main job, end to end.

1. the shipped model (EfficientAT mn04 fine-tuned on real SPRSound + ICBHI recordings) classifies
   every annotated cycle of real ICBHI recordings, printed beside its annotation;
2. simulate a dataset -> retrain the pretrained backbone on it (the real-data recipe, resumable)
   -> its Score on held-out simulated patients next to always-"normal";
3. export the retrained model to a verified bundle -> stream-classify a held-out recording -> latency table.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from stethoedge.runtime.errors import StethoedgeError

MARKER = ".stethoedge-demo"
#: Fewest simulated patients the retraining can split into training, validation and evaluation patients.
MIN_PATIENTS = 5


def _prepare(out: Path) -> None:
    """Use ``out`` as the demo's working directory, clearing a previous demo's outputs only."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise StethoedgeError(f"{out} is not empty and not a previous demo directory; choose another --out")
        for name in ("data", "run", "bundle", "cache"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("stethoedge demo working directory\n")


def classify_annotated(bundle: str | Path, recordings_dir: Path) -> dict[str, int]:
    """Print each annotated cycle's label beside the bundle's decision; return counts (agree, total, normal)."""
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.labels import CLASSES
    from stethoedge.runtime.padding import cyclic_pad
    from stethoedge.data.icbhi import list_recordings, load_cycles

    clf = Classifier.open(bundle)
    agree = total = normal = 0
    print(f"# model: {clf.bundle.root.name} ({clf.backend.artifact.name} on {clf.backend.name})")
    for rec in list_recordings(recordings_dir):
        print(f"-- {rec.stem} (official {rec.split} split, device {rec.info.device})")
        for k, (audio, label) in enumerate(load_cycles(rec), start=1):
            logits = clf.logits(cyclic_pad(audio, clf.spec.window_samples))
            decision = CLASSES[int(np.argmax(logits))]
            mark = "ok" if decision == CLASSES[label] else "--"
            print(f"  cycle {k:2d} ({len(audio) / 16000:4.1f} s)  annotated {CLASSES[label]:<8} model {decision:<8} {mark}")
            agree += decision == CLASSES[label]
            normal += label == 0
            total += 1
    print(f"agreement {agree}/{total} cycles ({agree / max(1, total):.0%}); always-'normal' would agree on "
          f"{normal}/{total} ({normal / max(1, total):.0%}). These recordings are for reading, not for scoring: "
          "MODEL_CARD.md has the evaluation with intervals.")
    return {"agree": agree, "total": total, "normal": normal}


def run_demo(out: Path, real_audio: str | None = None, weights: str | None = None, patients: int = 20,
             epochs: int = 6, seed: int = 0) -> dict[str, float]:
    """Run every stage, print what each produced, return the wall time of each stage in seconds.

    ``real_audio``: an annotated recording (or a folder of them) in ICBHI layout; ``weights``: the
    EfficientAT AudioSet weights the retraining starts from.
    """
    from stethoedge.export.exporter import export_run
    from stethoedge.models import default_bundle
    from stethoedge.runtime.bench import bench_bundle, format_bench_table
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource
    from stethoedge.train.edge_learner import EdgeRecipe, run_recipe
    from stethoedge.train.simulator import simulate_dataset

    if patients < MIN_PATIENTS:
        raise StethoedgeError(f"the demo needs at least {MIN_PATIENTS} simulated patients (--patients {patients}): "
                              "the retraining holds out validation and evaluation patients")
    _prepare(out)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t
        timings[stage] = time.perf_counter() - t
        print(f"== {stage} done in {timings[stage]:.1f} s\n", flush=True)
        t = time.perf_counter()

    shipped = default_bundle()
    if real_audio:
        folder = Path(real_audio)
        folder = folder if folder.is_dir() else folder.parent
        print(f"== 1/5 the shipped model on real recordings in {folder}", flush=True)
        classify_annotated(shipped, folder)
    else:
        print("== 1/5 skipped: no real recordings given (--real DIR with ICBHI-layout recordings)")
    lap("shipped model")

    print(f"== 2/5 simulate {patients} patients -> {out / 'data'}", flush=True)
    summary = simulate_dataset(out / "data", n_patients=patients, recordings_per_patient=3, duration_s=20.0, seed=seed)
    print(json.dumps(summary.get("class_counts", {})))
    lap("simulate")

    if not weights or not Path(weights).is_file():
        raise StethoedgeError(f"the retraining step starts from the AudioSet weights; {weights or '(none given)'} "
                              "is not a file (pass --weights ../shared/weights/efficientat_mn04_as.pt)")
    print(f"== 3/5 retrain the pretrained mn04 on simulated patients -> {out / 'run'}", flush=True)
    recipe = EdgeRecipe(out=str(out / "run"), weights=weights, icbhi=str(out / "data"), icbhi_test=str(out / "data"),
                        cache_dir=str(out / "cache"), views=1, epochs=epochs, samples_per_epoch=1024, seed=seed,
                        tune_from=11, optimizer="sam")
    metrics = run_recipe(recipe)
    held = metrics["evaluation"].get("eval/icbhi", {})
    for name, rep in held.items():
        m, ci = rep["metrics"], rep["ci95"]
        print(f"held-out simulated patients ({rep['n_patients']}, {rep['n_windows']} cycles) {name:<30} "
              f"Score {m['icbhi_score']:.3f} [{ci['icbhi_score'][0]:.3f}, {ci['icbhi_score'][1]:.3f}]  "
              f"Sp {m['icbhi_sp']:.3f} Se {m['icbhi_se']:.3f}")
    lap("train")

    print(f"== 4/5 export -> {out / 'bundle'}", flush=True)
    result = export_run(out / "run", out / "bundle", force=True, formats=["onnx-fp32", "onnx-int8-dynamic"])
    print(result.report)
    splits = json.loads((out / "run" / "splits.json").read_text())
    wav = next((out / "data").rglob(f"{splits['test'][0]}.wav"))
    clf = Classifier.open(out / "bundle")
    print(f"-- stream-classify {wav} ({clf.backend.artifact.name}; annotation {wav.with_suffix('.txt')})")
    for r in clf.classify(FileSource(wav), hop_s=2.0, min_s=2.0):
        probs = " ".join(f"{k}={v:.2f}" for k, v in r.probabilities.items())
        print(f"  {r.start_s:6.2f}-{r.end_s:<6.2f} s  {r.label:<8} {r.confidence:.2f}  {probs}"
              + ("  (padded)" if r.padded else ""))
    lap("export+classify")

    print("== 5/5 bench: the shipped model and the retrained one", flush=True)
    print(format_bench_table(bench_bundle(shipped) + bench_bundle(out / "bundle")))
    lap("bench")
    total = sum(timings.values())
    print("stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {total:.1f} s")
    return timings
