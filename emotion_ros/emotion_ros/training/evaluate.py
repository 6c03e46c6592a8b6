"""``emotion-eval``: measure the shipped (or any) models on your own data.

  emotion-eval face  --data DIR  [--perturb NAME[,NAME]] [--seed S] [--json FILE] [--confusion FILE.png]
  emotion-eval voice --data DIR  [--perturb NAME[,NAME]] [--seed S] [--json FILE] [--confusion FILE.png]
  emotion-eval fused --face-data DIR --voice-data DIR [--pairs N] [--seed S] [--json FILE] [--confusion FILE.png]

DIR holds one folder per label (vocabulary names or usual aliases: fear, fearful,
anger, disgust, happiness, sadness, surprise, pleasant_surprise, calm, ...); voice
data may also be RAVDESS-named files.  Faces go through the face node's detection
and alignment, voices through the voice node's segmentation and features.  The last
printed line is one JSON object.

--perturb (repeatable or a comma list, applied in order to each input before the node's
pipeline; deterministic given --seed) measures the models under recording conditions
they were not trained on (training/perturb.py):
  face:  blur (Gaussian, sigma 1.2 px at 48 px), dark (gamma 2.2, contrast 0.5), lowres
         (1/3 size and back), jpeg (quality 25), noise (sigma 12/255), rotate (15 deg, either way),
         rotate30 (30 deg, either way)

Faces: images of 96 px and more go through the face node's detector (BlazeFace; --detector to choose)
and its alignment (on the eyes when the detector gives them).  Smaller images are taken to be
pre-cut crops (FER2013's 48x48) and used whole, unless --detect-crops.
  voice: telephone (8 kHz, 300-3400 Hz), noise (white + pink, 10 dB SNR), quiet (-25 dB,
         16 bit), reverb (synthetic room, RT60 0.4 s), pitch_down / pitch_up (3 semitones
         lower / higher, same tempo: another speaker's register), slow / fast (tempo 0.8 / 1.25,
         same pitch: another speaker's pace), rate44k (44.1 kHz stereo S16 through the node's
         downmix and streaming resampler; last if combined)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, Optional

import numpy as np

from ..core.labels import LABELS
from .common import accuracy_within_labels, metrics_from_predictions


def default_model(name: str) -> str:
    from ..paths import model_path
    return model_path(name)


def save_confusion_png(cm, labels, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i].sum() == 0:
                continue
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def model_file_info(path: str) -> Dict:
    """Size and modification time of a model file (which version of a model a report measured)."""
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))}


def _finish(report: Dict, args, title: str) -> Dict:
    if args.confusion:
        save_confusion_png(report["confusion"], report["labels"], args.confusion,
                           f"{title} (n={report['n']}, accuracy {report['accuracy']:.1%})")
        report["confusion_png"] = args.confusion
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report), flush=True)
    return report


def _perturb_names(args, kind: str) -> list:
    from .perturb import parse_names
    try:
        return parse_names(args.perturb, kind)
    except ValueError as exc:
        raise SystemExit(f"emotion-eval {kind}: --perturb: {exc}") from None


def eval_face(args) -> Dict:
    from ..core.face.align import FaceAligner
    from ..core.face.model import FaceModel
    from .embed import face_outputs
    from .face_data import load_face_folder
    from .perturb import perturb_face

    names = _perturb_names(args, "face")
    model = FaceModel(args.model or default_model("face.pt"), device=args.device, int8=not args.float)
    if model.int8_fallback:
        print(f"emotion-eval face: {model.int8_fallback}", file=sys.stderr)
    model_file = model_file_info(model.path)
    t0 = time.time()
    transform = (lambda img, i: perturb_face(img, names, args.seed, i)) if names else None
    detector = None
    if args.detector:
        from ..core.face.detect import make_detector
        try:
            detector = make_detector(args.detector)
        except Exception as exc:  # noqa: BLE001 - unknown name, missing package: one line
            raise SystemExit(f"emotion-eval face: --detector {args.detector}: {exc}") from None
    aligner = FaceAligner(size=model.input_size, detector=detector, eyes=not args.no_eye_align,
                          detect_small=args.detect_crops)
    data = load_face_folder(args.data, size=model.input_size, aligner=aligner, transform=transform)
    for name, n in data.skipped_classes.items():
        print(f"skipping folder {name!r} ({n} files): not a label of the model {list(LABELS)}", file=sys.stderr)
    if len(data.labels) == 0:
        raise SystemExit(f"no labelled images found under {args.data}")
    out = face_outputs(model, data.images)
    report = metrics_from_predictions(data.labels, out.probs.argmax(1))
    report.update({"task": "face", "data": args.data, "model": model.path, "model_file": model_file,
                   "perturb": names, "seed": args.seed, "no_face_found": data.no_face,
                   "detector": getattr(aligner.detector, "name", "?"), "eye_align": aligner.eyes,
                   "detect_crops": aligner.detect_small, "int8": model.runs_int8,
                   "unreadable": len(data.unreadable), "skipped_classes": data.skipped_classes,
                   "seconds": round(time.time() - t0, 2)})
    print(f"{data.no_face} of {report['n']} images had no detected face: the whole image was used",
          file=sys.stderr)
    return _finish(report, args, "face")


def eval_voice(args) -> Dict:
    from ..core.voice.features import SAMPLE_RATE, load_audio
    from ..core.voice.model import VoiceModel
    from .embed import speaker_order, voice_outputs
    from .perturb import perturb_voice
    from .voice_data import list_voice_data

    names = _perturb_names(args, "voice")
    model = VoiceModel(args.model or default_model("voice.pt"), device=args.device)
    model_file = model_file_info(model.path)
    t0 = time.time()
    from ..core.errors import DataError
    from .voice_data import parse_speakers
    data = list_voice_data(args.data)      # FileNotFoundError for a missing folder: one line, exit 2
    for name, n in data.skipped_classes.items():
        print(f"skipping {name!r} ({n} files): not a label of the model {list(LABELS)}", file=sys.stderr)
    if args.speakers:
        keep = set(parse_speakers(args.speakers))
        data.items = [i for i in data.items if i.speaker in keep]
        if not data.items:
            raise DataError(f"no labelled audio of speaker(s) {', '.join(sorted(keep))} under {args.data}")
    if not data.items:
        raise DataError(f"no labelled audio found under {args.data} (one folder per label, or RAVDESS-named "
                        "files)")
    waves, index, ys, unreadable = [], [], [], 0
    for i, it in enumerate(data.items):
        try:
            waves.append(load_audio(it.path))
            index.append(i)
            ys.append(it.label)
        except ValueError as exc:
            unreadable += 1
            print(f"skipping {exc}", file=sys.stderr)
    # each speaker's recordings one after another in a seeded random order: a model with a running speaker
    # reference hears them as the node hears one person (a fresh reference per speaker)
    speakers = [data.items[i].speaker for i in index]
    order = speaker_order(speakers, args.seed)
    waves, index, ys, speakers = ([v[k] for k in order] for v in (waves, index, ys, speakers))
    if names:  # lazily, one recording at a time (44.1 kHz stereo is 5.5 times the size)
        inputs = (perturb_voice(w, SAMPLE_RATE, names, args.seed, i) for w, i in zip(waves, index))
    else:
        inputs = waves
    out, no_speech = voice_outputs(model, inputs, speakers=speakers)
    if not ys:
        raise DataError(f"none of the {len(data.items)} audio files under {args.data} could be read")
    report = metrics_from_predictions(ys, out.probs.argmax(1))
    # a diagnostic, never what the node does: the same outputs read over the labels this data has (TurEV-DB's four
    # of seven): how much of the error is the seven-way output on a corpus with fewer labels
    report["accuracy_within_labels"] = round(accuracy_within_labels(out.probs, ys), 4)
    report["labels_present"] = [LABELS[i] for i in sorted(set(ys))]
    from .calibration import ece
    report.update({"task": "voice", "data": args.data, "model": model.path, "model_file": model_file,
                   "perturb": names, "seed": args.seed, "no_speech_found": no_speech,
                   "unreadable": unreadable, "skipped_classes": data.skipped_classes,
                   "speakers": len({i.speaker for i in data.items}),
                   "speaker_filter": parse_speakers(args.speakers) if args.speakers else None,
                   "temperature": model.temperature, "ece": round(ece(out.probs, ys), 4),
                   "seconds": round(time.time() - t0, 2)})
    print_collapse_table(report)
    return _finish(report, args, "voice")


def print_collapse_table(report: Dict) -> None:
    """Share of the predictions per class beside its true share (stderr), and the collapse ratio."""
    share = report.get("prediction_share") or {}
    print("class        predicted  true", file=sys.stderr)
    for name, v in share.items():
        print(f"{name:<12} {v['predicted']:>8.1%} {v['true']:>6.1%}", file=sys.stderr)
    ratio = report.get("collapse_ratio")
    print(f"most predicted: {report.get('most_predicted')} at "
          f"{'n/a (never true)' if ratio is None else f'{ratio:.2f}x'} its true share", file=sys.stderr)


def eval_fused(args) -> Dict:
    from ..core.face.align import FaceAligner
    from ..core.face.model import FaceModel
    from ..core.fusion_model import FusionModel
    from ..core.voice.features import load_audio
    from ..core.voice.model import VoiceModel
    from .embed import face_outputs, voice_outputs_by_speaker
    from .face_data import load_face_folder
    from .train_fusion import paired_report
    from .voice_data import list_voice_data

    fm = FaceModel(args.face_model or default_model("face.pt"), device=args.device)
    vm = VoiceModel(args.voice_model or default_model("voice.pt"), device=args.device)
    fus = FusionModel(args.fusion_model or default_model("fusion.pt"), device=args.device)
    fus.check_dims(fm.embed_dim, vm.embed_dim)
    faces = load_face_folder(args.face_data, size=fm.input_size, aligner=FaceAligner(size=fm.input_size))
    voices = list_voice_data(args.voice_data)
    skipped = {"face": faces.skipped_classes, "voice": voices.skipped_classes}
    fo = face_outputs(fm, faces.images)
    vo, no_speech = voice_outputs_by_speaker(vm, [load_audio(i.path) for i in voices.items],
                                             [i.speaker for i in voices.items], args.seed)
    vy = np.array([i.label for i in voices.items])
    rep, y, pred = paired_report(fus, fo, faces.labels, vo, vy, args.pairs, args.seed)
    # the headline is what the fusion node does: its fusion_mode (config/emotion.yaml) average or the learned model
    from ..tools.bag_evaluate import _load_yaml_params
    node_mode = str(_load_yaml_params("emotion.yaml", "fusion_node").get("fusion_mode", "model"))
    headline = "reliability_average" if node_mode == "average" else "fused"
    report = dict(rep[headline])
    if headline != "fused":
        pred = np.asarray(rep.pop("_avg_pred"))
    rep.pop("_avg_pred", None)
    full = metrics_from_predictions(y, pred)
    report.update({"confusion": full["confusion"], "labels": full["labels"], "task": "fused",
                   "pairs": args.pairs, "seed": args.seed,
                   "face_only": rep["face_only"], "voice_only": rep["voice_only"],
                   "face_missing": rep["fused_face_missing"], "voice_missing": rep["fused_voice_missing"],
                   "late_fusion_mean_probs": rep["late_fusion_mean_probs"], "fusion": node_mode,
                   "learned_model": rep["fused"], "reliability_average": rep["reliability_average"],
                   "with_wrong_voice": {"learned_model": rep["fused_voice_wrong_label"],
                                        "reliability_average": rep["reliability_average_voice_wrong_label"],
                                        "late_fusion_mean_probs": rep["late_fusion_voice_wrong_label"]},
                   "no_face_found": faces.no_face, "no_speech_found": no_speech, "skipped_classes": skipped})
    print(f"pairs of a face and a voice with the same label: fused ({node_mode}) {report['accuracy']:.3f}, "
          f"learned model {rep['fused']['accuracy']:.3f}, reliability average "
          f"{rep['reliability_average']['accuracy']:.3f}, face only {rep['face_only']['accuracy']:.3f}, "
          f"voice only {rep['voice_only']['accuracy']:.3f}, face missing {rep['fused_face_missing']['accuracy']:.3f}, "
          f"voice missing {rep['fused_voice_missing']['accuracy']:.3f}", file=sys.stderr)
    return _finish(report, args, "fused (label-matched pairs)")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="emotion-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True)

    def perturb(sp, kind: str):
        from .perturb import FACE, VOICE
        sp.add_argument("--perturb", action="append", default=[], metavar="NAME",
                        help=f"apply to each input first (repeatable or a comma list; in order): "
                             f"{', '.join(FACE if kind == 'face' else VOICE)}")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random perturbations")

    def common(sp):
        sp.add_argument("--json", default=None, help="write the report here")
        sp.add_argument("--confusion", default=None, help="write the confusion matrix PNG here")
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda")

    sp = sub.add_parser("face", help="face model on a folder of labelled images")
    sp.add_argument("--data", required=True)
    sp.add_argument("--model", default=None, help="face model (default: the shipped models/face.pt)")
    sp.add_argument("--detector", default=None,
                    help="face detector (blazeface, blazeface_full, blazeface_short, haar; default: blazeface, "
                         "or haar when its package is missing)")
    sp.add_argument("--no-eye-align", action="store_true",
                    help="crop on the detector's box even when it gives the eyes")
    sp.add_argument("--detect-crops", action="store_true",
                    help="images under 96 px (pre-cut crops such as FER2013's) are enlarged onto a grey canvas "
                         "and go through detection and alignment like a camera frame (default: used whole)")
    sp.add_argument("--float", action="store_true",
                    help="run the float network even where the model file has int8 ranges (the face node with "
                         "int8: false); by default the CPU runs int8 when the file has them, as the node does")
    perturb(sp, "face")
    common(sp)
    sp.set_defaults(func=eval_face)
    sp = sub.add_parser("voice", help="voice model on labelled audio")
    sp.add_argument("--data", required=True)
    sp.add_argument("--model", default=None, help="voice model (default: the shipped models/voice.pt)")
    sp.add_argument("--speakers", default=None,
                    help="only these speakers (RAVDESS actor numbers/ranges or ids as in file names: '17-20', "
                         "'1358,7895')")
    perturb(sp, "voice")
    common(sp)
    sp.set_defaults(func=eval_voice)
    sp = sub.add_parser("fused", help="fusion on label-matched face/voice pairs")
    sp.add_argument("--face-data", required=True)
    sp.add_argument("--voice-data", required=True)
    sp.add_argument("--pairs", type=int, default=2000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--face-model", default=None)
    sp.add_argument("--voice-model", default=None)
    sp.add_argument("--fusion-model", default=None)
    common(sp)
    sp.set_defaults(func=eval_fused)
    args = p.parse_args(argv)
    from ..core.errors import DataError
    from ..core.modelio import ModelFileError
    try:
        args.func(args)
    except (DataError, ModelFileError, FileNotFoundError) as exc:
        print(f"emotion-eval: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
