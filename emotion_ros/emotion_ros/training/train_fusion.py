"""Train the model-level fusion network (``emotion-train fusion``).

There is no paired audio-visual data here, so the network is trained on pairs of a
face and a voice that carry the same label: faces from the face model's held-out
dev part of its training data, voices from the voice model's dev speakers (plus
augmented copies).  Neither unimodal model saw these samples, so their embeddings
are as confident as on new people.  Modality dropout teaches the network to work
with one modality missing; an auxiliary classifier per modality keeps either from
dominating (Haddad et al. 2023).  Deliberately wrong or out-of-domain inputs for one modality (``--corrupt-face``,
``--corrupt-voice``: embeddings of another label, heavy perturbations; the target stays the sound modality's label)
teach it to ignore a modality that disagrees.  Whether the learned model is shipped is decided on held-out recordings
(``scripts/tune_fusion.py --fusion-model``): the node's ``fusion_mode`` stays ``average`` unless it wins there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.face.align import FaceAligner
from ..core.face.model import FaceModel
from ..core.fusion_model import ARCH, FusionModel, FusionNet
from ..core.labels import LABELS, NUM_LABELS
from ..core.modelio import load_checkpoint, save_checkpoint
from ..core.voice.features import load_audio
from ..core.voice.model import VoiceModel
from .common import args_config, metrics_from_predictions, seed_everything, stratified_holdout, write_json
from .embed import Outputs, face_outputs, voice_outputs_by_speaker
from .face_data import load_faces
from .voice_data import list_voice_data, parse_speakers, split_by_speaker


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--face-model", required=True)
    p.add_argument("--voice-model", required=True)
    p.add_argument("--face-data", required=True, help="the face model's training data (its dev part is used)")
    p.add_argument("--voice-data", required=True, help="the voice model's data (its dev speakers are used)")
    p.add_argument("--face-test", default=None, help="faces for the paired test (e.g. FER2013 val)")
    p.add_argument("--out", required=True)
    p.add_argument("--run-dir", default="runs/fusion")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--modality-dropout", type=float, default=0.25, help="probability of dropping each modality")
    p.add_argument("--aux-weight", type=float, default=0.5)
    p.add_argument("--voice-augment-copies", type=int, default=4)
    p.add_argument("--corrupt-face", type=float, default=0.1,
                   help="share of face+voice pairs whose face is replaced by a wrong-label or heavily perturbed one")
    p.add_argument("--corrupt-voice", type=float, default=0.3,
                   help="the same for the voice (voices of new speakers are wrong far more often than faces)")
    p.add_argument("--test-pairs", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/emotion_ros"))
    p.add_argument("--threads", type=int, default=0)


def draw_pairs(face_y: np.ndarray, voice_y: np.ndarray, n: int, rng: np.random.Generator):
    """Pairs with the same label: a voice uniformly, then a face of its label."""
    by_label = {c: np.flatnonzero(face_y == c) for c in range(NUM_LABELS)}
    vi = [i for i in range(len(voice_y)) if len(by_label[int(voice_y[i])])]
    vs = rng.choice(vi, size=n, replace=True)
    fs = np.array([rng.choice(by_label[int(voice_y[i])]) for i in vs])
    return fs, vs


def corrupt(batch: torch.Tensor, pool: torch.Tensor, pool_y: np.ndarray, batch_y: np.ndarray, prob: torch.Tensor,
            gen: torch.Generator):
    """Deliberately wrong or out-of-domain inputs for one modality, so that the fusion learns to ignore a modality
    that disagrees: where ``rand < prob`` (per sample), half the time the embedding of a sample of *another* label
    (a confident, wrong input: shuffled labels), half the time a heavily perturbed one (scaled by 0-3, plus noise of
    twice the pool's spread: out of domain).  -> (inputs, corrupted mask (N,) float)."""
    n = batch.shape[0]
    bad = (torch.rand(n, generator=gen) < prob).float()
    if not bad.any():
        return batch, bad
    out = batch.clone()
    kind = torch.rand(n, generator=gen) < 0.5
    std = pool.std(0, keepdim=True)
    for i in torch.nonzero(bad > 0).flatten().tolist():
        if kind[i]:
            others = np.flatnonzero(pool_y != batch_y[i])
            j = int(others[int(torch.randint(len(others), (1,), generator=gen))]) if len(others) else i
            out[i] = pool[j]
        else:
            scale = float(torch.rand(1, generator=gen)) * 3.0
            out[i] = batch[i] * scale + 2.0 * std[0] * torch.randn(batch.shape[1], generator=gen)
    return out, bad


def node_average():
    """A TemporalFusion with the fusion node's settings (config/emotion.yaml), for its reliability-weighted average;
    the voice node's ``unsure_threshold`` stands in for the voice node's flag."""
    from ..core.fusion import TemporalFusion
    from ..tools.bag_evaluate import _load_yaml_params, fusion_node_settings
    params = fusion_node_settings()
    params["fusion_mode"] = "average"
    thr = _load_yaml_params("emotion.yaml", "voice_node").get("unsure_threshold")
    if thr is not None:
        params["voice_unsure_threshold"] = float(thr)
    return TemporalFusion(None, **params)


def paired_report(fusion: FusionModel, face: Outputs, face_y, voice: Outputs, voice_y, n: int, seed: int):
    rng = np.random.default_rng(seed)
    fs, vs = draw_pairs(face_y, voice_y, n, rng)
    y = voice_y[vs]
    ones, zeros = np.ones(n), np.zeros(n)
    both = fusion.predict_batch(face.emb[fs], voice.emb[vs], ones, ones)["fused"]
    face_missing = fusion.predict_batch(None, voice.emb[vs], zeros, ones)["fused"]
    voice_missing = fusion.predict_batch(face.emb[fs], None, ones, zeros)["fused"]
    # a voice of another label (a confidently wrong voice): fusion should stay near the face alone
    others = {c: np.flatnonzero(voice_y != c) for c in np.unique(voice_y)}
    wrong = np.array([rng.choice(others[voice_y[v]]) if len(others[voice_y[v]]) else v for v in vs])
    voice_wrong = fusion.predict_batch(face.emb[fs], voice.emb[wrong], ones, ones)["fused"]
    keep = ("accuracy", "macro_f1", "n", "per_class_recall")
    avg = node_average()
    avg_pred = np.array([avg.average(face.probs[f], voice.probs[v]).argmax() for f, v in zip(fs, vs)])

    def m(pred):
        r = metrics_from_predictions(y, pred)
        return {k: r[k] for k in keep}

    report = {
        "fused": m(both.argmax(1)),
        "face_only": m(face.probs[fs].argmax(1)),
        "voice_only": m(voice.probs[vs].argmax(1)),
        "fused_face_missing": m(face_missing.argmax(1)),
        "fused_voice_missing": m(voice_missing.argmax(1)),
        "late_fusion_mean_probs": m((face.probs[fs] + voice.probs[vs]).argmax(1)),
        "fused_voice_wrong_label": m(voice_wrong.argmax(1)),
        "reliability_average": m(avg_pred),
        "reliability_average_voice_wrong_label": m(np.array([avg.average(face.probs[f], voice.probs[v]).argmax()
                                                             for f, v in zip(fs, wrong)])),
        "late_fusion_voice_wrong_label": m((face.probs[fs] + voice.probs[wrong]).argmax(1)),
    }
    report["_avg_pred"] = avg_pred  # for emotion-eval fused's confusion matrix (popped there)
    return report, y, both.argmax(1)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    fm = FaceModel(args.face_model, device="cpu")
    vm = VoiceModel(args.voice_model, device="cpu")
    fcfg = load_checkpoint(args.face_model, "face")["config"]["args"]
    vcfg = load_checkpoint(args.voice_model, "voice")["config"]
    # face dev part: the same stratified hold-out the face training used
    faces = load_faces(args.face_data, cache_dir=args.cache_dir, aligner=FaceAligner())
    dev_mask = stratified_holdout(faces.labels, fcfg["dev_fraction"], fcfg["seed"])
    face_dev = face_outputs(fm, faces.images[dev_mask], progress=True)
    face_dev_y = faces.labels[dev_mask]
    # voice dev speakers (+ augmented copies)
    items = list_voice_data(args.voice_data).items
    speakers = lambda v: parse_speakers(v) if isinstance(v, str) else list(v)  # noqa: E731  (old configs: "17-20")
    rest, test_items = split_by_speaker(items, speakers(vcfg["test_speakers"]))
    _, dev_items = split_by_speaker(rest, speakers(vcfg["dev_speakers"]))
    print(f"face dev {len(face_dev_y)}, voice dev {len(dev_items)} ({vcfg['dev_speakers']}), "
          f"voice test {len(test_items)}", flush=True)
    from .augment import augment_voice
    waves = [load_audio(i.path) for i in dev_items]
    wy = [i.label for i in dev_items]
    aug = [augment_voice(w, 16000, rng) for _ in range(args.voice_augment_copies) for w in waves]
    spk = [i.speaker for i in dev_items]
    voice_dev, _ = voice_outputs_by_speaker(vm, waves + aug, spk * (1 + args.voice_augment_copies), args.seed,
                                            progress=True)
    voice_dev_y = np.array(wy * (1 + args.voice_augment_copies))

    net = FusionNet(fm.embed_dim, vm.embed_dim, hidden=args.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    fe, ve = torch.from_numpy(face_dev.emb), torch.from_numpy(voice_dev.emb)
    for step in tqdm(range(args.steps), desc="fusion", mininterval=10, file=sys.stdout):
        net.train()
        fs, vs = draw_pairs(face_dev_y, voice_dev_y, args.batch_size, rng)
        y = torch.from_numpy(voice_dev_y[vs])
        r = torch.rand(args.batch_size, generator=gen)
        fmask = (r >= args.modality_dropout).float()                  # drop face
        vmask = ((r < args.modality_dropout) | (torch.rand(args.batch_size, generator=gen)
                                                 >= args.modality_dropout)).float()  # never both
        both = fmask * vmask  # a modality is corrupted only where the other one carries the label
        f_in, f_bad = corrupt(fe[fs], fe, face_dev_y, face_dev_y[fs], args.corrupt_face * both, gen)
        v_in, v_bad = corrupt(ve[vs], ve, voice_dev_y, voice_dev_y[vs], args.corrupt_voice * both * (1 - f_bad), gen)
        fused, fa, va = net(f_in, v_in, fmask, vmask)
        loss = F.cross_entropy(fused, y, label_smoothing=0.05)
        fa_m, va_m = fmask * (1 - f_bad), vmask * (1 - v_bad)  # aux heads learn only from sound inputs
        aux = (F.cross_entropy(fa, y, reduction="none") * fa_m).sum() / fa_m.sum().clamp(min=1) + \
              (F.cross_entropy(va, y, reduction="none") * va_m).sum() / va_m.sum().clamp(min=1)
        loss = loss + args.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    config = {"args": args_config(args), "model": {"hidden": args.hidden}, "labels": list(LABELS),
              "face_model": os.path.basename(args.face_model), "voice_model": os.path.basename(args.voice_model),
              "n_face_dev": int(len(face_dev_y)), "n_voice_dev": int(len(dev_items)),
              "voice_dev_speakers": vcfg["dev_speakers"]}
    spec = {"face_dim": fm.embed_dim, "voice_dim": vm.embed_dim}
    save_checkpoint(args.out, kind="fusion", arch=ARCH, model=net, input_spec=spec, config=config)
    fusion = FusionModel(args.out, device="cpu")
    metrics = {"dev_pairs": paired_report(fusion, face_dev, face_dev_y, voice_dev, voice_dev_y, 2000, args.seed)[0]}
    metrics["dev_pairs"].pop("_avg_pred", None)
    if args.face_test and test_items:
        ft = load_faces(args.face_test, cache_dir=args.cache_dir, aligner=FaceAligner())
        face_test = face_outputs(fm, ft.images, progress=True)
        voice_test, _ = voice_outputs_by_speaker(vm, [load_audio(i.path) for i in test_items],
                                                 [i.speaker for i in test_items], args.seed + 1, progress=True)
        metrics["test_pairs"] = paired_report(fusion, face_test, ft.labels, voice_test,
                                              np.array([i.label for i in test_items]), args.test_pairs,
                                              args.seed + 1)[0]
        metrics["test_pairs"].pop("_avg_pred", None)
        metrics["test_pairs"]["faces"] = args.face_test
        metrics["test_pairs"]["voice_speakers"] = vcfg["test_speakers"]
    save_checkpoint(args.out, kind="fusion", arch=ARCH, model=net, input_spec=spec, config=config,
                    metrics=metrics)
    write_json(os.path.join(args.run_dir, "metrics.json"), metrics)
    print(json.dumps({"out": args.out, **{k: {kk: vv["accuracy"] for kk, vv in v.items() if isinstance(vv, dict)}
                                          for k, v in metrics.items()}}), flush=True)
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
