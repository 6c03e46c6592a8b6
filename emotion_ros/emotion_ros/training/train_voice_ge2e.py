"""Train the GE2E member of the voice ensemble (``emotion-train voice-ge2e``).

    emotion-train voice-ge2e --data ../shared/data/ravdess_speech --data ../shared/data/turev_db \\
        --test-speakers 17-20,1358,7895 --dev-speakers 15-16 --out runs/ge2e/voice.pt

A linear classifier over the pooled states of a frozen, pretrained speaker encoder (GE2E, from the Resemblyzer
0.1.4 wheel's ``pretrained.pt``, Apache-2.0; :mod:`emotion_ros.core.voice.ge2e`). The encoder's weights are copied
into the output checkpoint, so the node never reads Resemblyzer. Data, splits and sampling as ``emotion-train
voice``: speakers split into train / dev / test, every corpus and, within it, every label weighted equally, a
corpus trained only over its own labels (partial labels), each training utterance heard clean and as
``--augment-copies`` copies through the same room / microphone / noise / speed / pitch augmentation (and
``--noisy-copies`` more with noise in every one), every copy cut as the voice node cuts it. The temperature is
fitted on the dev speakers. Test speakers are not read. ``--loso-corpus NAME`` (with ``--loso-group K`` and
``--loso-perturb NAME``) also reports heads trained without some of that corpus's training speakers, judged on them
clean (and perturbed): a dev signal with more speakers than the dev speakers.
Add the result to an ensemble with ``emotion-train voice-ensemble --members MAIN.pt ... THIS.pt``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.errors import DataError
from ..core.labels import LABELS
from ..core.modelio import ModelFileError, _load_problem, save_checkpoint
from ..core.voice import ge2e
from ..core.voice.features import FeatureSpec, SpeakerNormaliser
from .augment import augment_voice
from .calibration import calibrate_report
from .common import accuracy_within_labels, args_config, metrics_from_predictions, seed_everything
from .perturb import parse_names, perturb_voice
from .train_voice import (_load_waves, _sample_weights, _speed_range, factor_range, node_cut, random_offsets,
                          speaker_groups)
from .voice_data import label_masks, load_corpora, parse_speakers, split_parts


def add_args(p: argparse.ArgumentParser, encoder_help: str = "", run_dir: str = "runs/voice_ge2e") -> None:
    """The options of ``voice-ge2e``; ``encoder_help`` given (another encoder's member): ``--encoder`` may repeat
    and there is no ``--channel-norm``."""
    p.add_argument("--data", required=True, action="append",
                   help="corpus folder (RAVDESS-style names or one folder per label); repeat for several corpora")
    p.add_argument("--out", required=True)
    p.add_argument("--run-dir", default=run_dir, help="where the pooled-feature cache goes")
    p.add_argument("--test-speakers", default="17-20", help="speakers never read (e.g. 17-20,1358,7895)")
    p.add_argument("--dev-speakers", default="15-16", help="held-out speakers the temperature is fitted on")
    p.add_argument("--speaker-regex", default=None, help="speaker id from file names (non-RAVDESS data)")
    if encoder_help:
        p.add_argument("--encoder", action="append", default=[], help=encoder_help)
    else:
        p.add_argument("--encoder", default="",
                       help="Resemblyzer's pretrained.pt (default: the one of the installed resemblyzer package)")
    p.add_argument("--augment-copies", type=int, default=4, help="augmented copies of each training utterance")
    p.add_argument("--noisy-copies", type=int, default=0,
                   help="further copies made by the same augmentation with background noise (0-20 dB SNR) in every "
                        "one, after the --augment-copies ones (off by default)")
    p.add_argument("--pitch-prob", type=float, default=0.3, help="probability of a pitch shift per copy")
    p.add_argument("--pitch-semitones", type=float, default=2.0, help="range of the pitch shift, either way")
    p.add_argument("--speed-range", default="0.9,1.1", help="range of the speed factor (tempo and pitch together)")
    p.add_argument("--tempo-prob", type=float, default=0.0,
                   help="probability per copy of a faster or slower delivery at the same pitch (time-stretch)")
    p.add_argument("--tempo-range", default="0.8,1.25", help="range of the time-stretch factor")
    p.add_argument("--l2", type=float, default=5e-4, help="weight decay of the linear head (0.5 l2 |W|^2)")
    p.add_argument("--loso-corpus", default="", metavar="NAME",
                   help="also report, for each training speaker of this corpus (a --data folder's name, e.g. "
                        "turev_db), the accuracy of a head trained without that speaker on its clean recordings: "
                        "a dev signal for a corpus without dev speakers (the saved head is unchanged)")
    p.add_argument("--loso-group", type=int, default=1, metavar="K",
                   help="--loso-corpus: leave K speakers out at a time (its training speakers in sorted order, "
                        "e.g. 2 for RAVDESS actors 1-14: seven folds); each judged as the node hears it")
    p.add_argument("--loso-perturb", default="", metavar="NAME",
                   help="--loso-corpus: also judge each left-out speaker under this recording perturbation "
                        "(emotion-eval voice --perturb's names, e.g. noise), perturbation seeds 0-2 pooled")
    if not encoder_help:
        p.add_argument("--channel-norm", action="store_true",
                       help="scale GE2E's mel bands to the training set's mean band levels (each by at most 12 dB)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)


def encoder_path(arg: str) -> str:
    """--encoder, or ``pretrained.pt`` of the installed resemblyzer package (found without importing it)."""
    if arg:
        if not os.path.isfile(arg):
            raise ModelFileError(f"GE2E encoder file not found: {arg!r}")
        return arg
    spec = importlib.util.find_spec("resemblyzer")
    path = os.path.join(list(spec.submodule_search_locations)[0], "pretrained.pt") if spec else ""
    if not path or not os.path.isfile(path):
        raise ModelFileError("no GE2E encoder: install the resemblyzer wheel (pip install --no-deps "
                             "Resemblyzer==0.1.4; scripts/requirements-nodeps.txt) or give --encoder pretrained.pt")
    return path


def load_encoder(path: str) -> ge2e.GE2EEncoder:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # corrupt, cut off, foreign
        raise ModelFileError(f"GE2E encoder file {path!r} cannot be used: {_load_problem(exc)}") from None
    try:
        return ge2e.GE2EEncoder.from_resemblyzer(ckpt["model_state"])
    except (KeyError, TypeError, RuntimeError) as exc:   # not Resemblyzer's layout
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelFileError(f"GE2E encoder file {path!r} cannot be used: not Resemblyzer's pretrained.pt "
                             f"({type(exc).__name__}: {first})") from None


def _pooled(encoder, waves: List[np.ndarray], what: str) -> np.ndarray:
    return np.stack([encoder.pooled(w) for w in tqdm(waves, desc=what, mininterval=15, file=sys.stdout)])


def node_offsets(v: np.ndarray, speakers: List[str], window: int, seed: int, key: str = "whisper"):
    """What a speaker-normalised member reads when each speaker's utterances reach the node one speaker after
    another, each speaker's in a seeded random order (:func:`~.embed.speaker_order`, as ``emotion-eval voice``
    plays them): (offsets (N, D), counted (N,) bool: the reference held two or more utterances, so the member
    does not abstain)."""
    from .embed import speaker_order
    out, counted = np.zeros_like(v), np.zeros(len(v), bool)
    norms = {}
    for i in speaker_order(speakers, seed):
        ref = norms.setdefault(speakers[i], SpeakerNormaliser(window))
        out[i] = ref.offset(v[i], key=key)
        counted[i] = ref.held(key) >= 2
    return out, counted


def leave_one_speaker_out(v_tr: np.ndarray, v: np.ndarray, y_tr: np.ndarray, c_tr: np.ndarray,
                          speakers: List[str], corpus: int, masks: np.ndarray, l2: float, seed: int,
                          speaker_norm: int, group: int = 1, perturbed: Optional[np.ndarray] = None,
                          perturb_name: str = "") -> dict:
    """For each training speaker of ``corpus``: a head trained on every copy of the other training utterances
    (``v``: the training rows as the head reads them, copies x utterances), judged on that speaker's clean
    recordings (``v_tr[0]``) as the node hears them (speaker-normalised: one speaker after another, a fresh reference,
    the first utterance abstaining and not counted), 7-way -> per speaker accuracy and n, pooled accuracy, and the
    share of predictions that are labels the corpus does not have.  ``accuracy_within_labels``: the same heads'
    argmax over the corpus's own labels only (a diagnostic, never what the node does: how much of the error is the
    7-way output on a corpus that has fewer labels; never below ``accuracy``, since the truth is always one of them).
    ``group``: the corpus's training speakers left out ``group`` at a time, in sorted order (a fold's speakers are
    judged together, each with its own reference). ``perturbed`` (seeds, N, D): the same training utterances' states
    under a recording perturbation (rows of other corpora unused); each left-out speaker is also judged on every seed's
    states, pooled -> ``perturbed`` {name, accuracy, n, speakers}."""
    n_copies = v_tr.shape[0]
    spk = np.asarray(speakers)
    y_all, c_all = np.tile(y_tr, n_copies), np.tile(c_tr, n_copies)
    if group < 1:
        raise DataError(f"--loso-group must be >= 1, got {group}")
    absent = 0
    scores, truths = [], []      # every left-out speaker's, for the reading over the corpus's own labels
    clean, noisy = {}, {}        # speaker -> [right, n], clean and under the perturbation (all seeds)

    def judge(head, states, idx):
        """The head on ``states`` (rows ``idx``) as the node hears them -> (logits, truths, their speakers)."""
        if speaker_norm:
            x, counted = node_offsets(states, [speakers[i] for i in idx], speaker_norm, seed)
        else:
            x, counted = states, np.ones(len(idx), bool)
        with torch.no_grad():
            z = head(torch.from_numpy(np.ascontiguousarray(x[counted], np.float32)))
        return z, y_tr[idx][counted], spk[idx][counted]

    def tally(counts, hit, who, fold):
        for s in fold:
            c = counts.setdefault(s, [0, 0])
            c[0] += int(hit[who == s].sum())
            c[1] += int((who == s).sum())

    def summary(counts):
        """-> (per speaker {accuracy, n}, right, n) of ``counts``."""
        per = {s.split(":", 1)[-1]: {"accuracy": round(r / m, 4) if m else None, "n": m}
               for s, (r, m) in counts.items()}
        return per, sum(r for r, _ in counts.values()), sum(m for _, m in counts.values())

    names = sorted({s for s, c in zip(speakers, c_tr) if c == corpus})
    for fold in (names[i:i + group] for i in range(0, len(names), group)):
        left = np.isin(spk, fold)
        keep = np.tile(~left, n_copies)
        head = train_head(v[keep], y_all[keep], c_all[keep], masks, _sample_weights(c_all[keep], y_all[keep], True),
                          l2, seed)
        idx = np.flatnonzero(left)
        z, truth, who = judge(head, v_tr[0, idx], idx)
        pred = z.argmax(1).numpy()
        tally(clean, pred == truth, who, fold)
        scores.append(z.numpy())
        truths.append(truth)
        absent += int((~masks[corpus][pred]).sum())
        for states in (perturbed if perturbed is not None else ()):
            zp, tp, wp = judge(head, states[idx], idx)
            tally(noisy, zp.argmax(1).numpy() == tp, wp, fold)
    out, right, n = summary(clean)
    res = {"speakers": out, "accuracy": round(right / n, 4) if n else None, "n": n,
           "absent_label_share": round(absent / n, 4) if n else None,
           "accuracy_within_labels": round(accuracy_within_labels(np.concatenate(scores), np.concatenate(truths),
                                                                  masks[corpus]), 4) if n else None}
    if group > 1:
        res["group"] = group
    if perturbed is not None:
        per, r, m = summary(noisy)
        res["perturbed"] = {"name": perturb_name, "seeds": len(perturbed), "n": m,
                            "accuracy": round(r / m, 4) if m else None, "speakers": per}
    return res


def train_head(v: np.ndarray, y: np.ndarray, corpus: np.ndarray, masks: np.ndarray, weights: np.ndarray,
               l2: float, seed: int) -> ge2e.GE2EHead:
    """Weighted, partial-label logistic regression on standardised pooled vectors (full batch, L-BFGS)."""
    torch.manual_seed(seed)
    head = ge2e.GE2EHead(dim=v.shape[1])
    head.mean.copy_(torch.from_numpy(v.mean(0)))
    head.std.copy_(torch.from_numpy(v.std(0) + 1e-3))
    x = torch.from_numpy(v)
    yt = torch.from_numpy(y)
    wt = torch.from_numpy(weights.astype(np.float32))
    allowed = torch.from_numpy(masks[corpus])
    opt = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=300, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = head(x).masked_fill(~allowed, -1e4)
        loss = (F.cross_entropy(z, yt, reduction="none") * wt).sum() + 0.5 * l2 * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return head.eval()


class _GE2E:
    """What is particular to the GE2E member (the Whisper member: train_voice_whisper)."""
    name = "ge2e"
    arch = ge2e.ARCH
    member = ge2e.GE2EMember

    @staticmethod
    def load(arg: str):
        return load_encoder(encoder_path(arg))

    @staticmethod
    def input_spec() -> dict:
        return {"ge2e": {"sample_rate": ge2e.SAMPLE_RATE, "n_fft": ge2e.N_FFT, "hop": ge2e.HOP,
                         "n_mels": ge2e.N_MELS, "target_dbfs": ge2e.TARGET_DBFS,
                         "encoder": "GE2E, Resemblyzer 0.1.4 pretrained.pt (Apache-2.0), frozen"}}


def run(args, kind=_GE2E) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    channel_norm = getattr(args, "channel_norm", False)      # GE2E only: other members' parsers have no such option
    speaker_norm = int(getattr(args, "speaker_norm", 0))     # Whisper only, likewise
    if speaker_norm < 0 or speaker_norm == 1:
        raise DataError(f"--speaker-norm must be 0 (off) or a window of >= 2 utterances, got {speaker_norm}")
    if args.augment_copies < 0:
        raise DataError(f"--augment-copies must be >= 0, got {args.augment_copies}")
    if args.noisy_copies < 0:
        raise DataError(f"--noisy-copies must be >= 0, got {args.noisy_copies}")
    if args.pitch_semitones < 0:
        raise DataError(f"--pitch-semitones must be >= 0, got {args.pitch_semitones}")
    speed = _speed_range(args)
    tempo = factor_range(args.tempo_range, "--tempo-range")
    encoder = kind.load(args.encoder)
    corpora = load_corpora(args.data, args.speaker_regex)
    parts = split_parts(corpora, parse_speakers(args.test_speakers), parse_speakers(args.dev_speakers))
    train, dev = parts["train"], parts["dev"]              # the test speakers' files are not read
    if not train:
        raise DataError("no training files left after holding out the dev and test speakers")
    if len({it.label for it, _ in train}) < 2:
        raise DataError("the training speakers' files hold one label only: a classifier needs at least two")
    if not dev:
        raise DataError(f"no files of the dev speakers ({args.dev_speakers}) to fit the temperature on")
    print(f"train {len(train)} files, dev {len(dev)} (test speakers not read)", flush=True)
    loso = getattr(args, "loso_corpus", "")
    if loso:
        names = [c.name for c in corpora]
        if loso not in names:
            raise DataError(f"--loso-corpus {loso!r} is not one of the --data corpora ({', '.join(names)})")
        loso_ci = names.index(loso)
        if len({it.speaker for it, ci in train if ci == loso_ci}) < 2:
            raise DataError(f"--loso-corpus {loso!r}: fewer than two of its speakers are training speakers")
    loso_group, loso_perturb = int(getattr(args, "loso_group", 1)), getattr(args, "loso_perturb", "")
    if loso_group < 1:
        raise DataError(f"--loso-group must be >= 1, got {loso_group}")
    if (loso_group != 1 or loso_perturb) and not loso:
        raise DataError("--loso-group and --loso-perturb need --loso-corpus")
    if loso_perturb:
        try:
            loso_perturb = parse_names([loso_perturb], "voice")
        except ValueError as exc:
            raise DataError(f"--loso-perturb: {exc}") from None
        if "rate44k" in loso_perturb:
            raise DataError("--loso-perturb: rate44k changes the sample rate; the pooled states need 16 kHz")

    w_tr, it_tr, bad = _load_waves([it for it, _ in train], "train", "node")
    w_dev, it_dev, bad_dev = _load_waves([it for it, _ in dev], "dev", "node")
    for line in (bad + bad_dev)[:20]:
        print(f"skipped unreadable file {line}", file=sys.stderr)
    if bad or bad_dev:
        print(f"skipped {len(bad) + len(bad_dev)} unreadable file(s)", file=sys.stderr)
    if not w_tr or not w_dev:
        raise DataError("none of the training or dev files could be read")
    ci_of = {id(it): ci for it, ci in train}
    c_tr = np.array([ci_of[id(it)] for it in it_tr], np.int64)
    y_tr = np.array([it.label for it in it_tr], np.int64)
    spk_tr = [f"{ci}:{it.speaker}" for ci, it in zip(c_tr, it_tr)]    # speakers keyed by corpus: ids may repeat
    y_dev = np.array([it.label for it in it_dev], np.int64)

    key = hashlib.sha256(json.dumps({**({"kind": kind.name} if kind is not _GE2E else {}),
                                     "copies": args.augment_copies, "pitch": args.pitch_prob, "seed": args.seed,
                                     **({"noisy": args.noisy_copies} if args.noisy_copies else {}),
                                     **({"channel_norm": 1} if channel_norm else {}),
                                     **({"semitones": args.pitch_semitones} if args.pitch_semitones != 2.0 else {}),
                                     **({"speed": list(speed)} if speed != (0.9, 1.1) else {}),
                                     **({"tempo": [args.tempo_prob, *tempo]} if args.tempo_prob > 0 else {}),
                                     "items": [f"{it.path}|{os.path.getsize(it.path)}" for it in it_tr + it_dev]}
                                    ).encode()).hexdigest()[:16]
    cache = os.path.join(args.run_dir, "cache", f"{kind.name}-{key}.npz")
    cached = os.path.isfile(cache)
    # the clean training utterances as the node cuts them: for the reference and for the clean copy, cut once
    clean = [node_cut(w) for w in w_tr] if channel_norm or not cached else None
    if channel_norm:       # the reference: mean band levels of the clean training utterances
        encoder.set_band_ref(np.mean([ge2e.band_log_mean(w) for w in clean], 0))
    if cached:
        d = np.load(cache)
        v_tr, v_dev = d["train"], d["dev"]
        print(f"pooled {kind.name} states from {cache}", flush=True)
    else:
        rng = np.random.default_rng(args.seed)
        copies = [_pooled(encoder, clean, "train clean")]
        n_aug = args.augment_copies + args.noisy_copies
        for k in range(n_aug):       # the noisy copies last, so that the others are those of a run without them
            aug = [node_cut(augment_voice(w, 16000, rng, p_pitch=args.pitch_prob, pitch_semitones=args.pitch_semitones,
                                          speed=speed, p_tempo=args.tempo_prob, tempo=tempo,
                                          **({"p_noise": 1.0} if k >= args.augment_copies else {})))
                   for w in w_tr]
            copies.append(_pooled(encoder, aug, f"train copy {k + 1}/{n_aug}"))
        v_tr = np.stack(copies)
        v_dev = _pooled(encoder, [node_cut(w) for w in w_dev], "dev")
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        np.savez(cache, train=v_tr, dev=v_dev)

    n_copies, n_tr = v_tr.shape[0], v_tr.shape[1]
    masks = label_masks(corpora)
    v = v_tr.reshape(-1, v_tr.shape[-1])
    counted = np.ones(len(y_dev), bool)
    if speaker_norm:       # each state minus the mean of it and 1..window-1 others of its speaker, same copy
        group_of, groups = speaker_groups(spk_tr)
        v = random_offsets(v_tr, groups, group_of, np.tile(np.arange(n_tr), n_copies), speaker_norm,
                           np.random.default_rng(args.seed + 1), copies=np.repeat(np.arange(n_copies), n_tr),
                           min_count=2)
        v_dev, counted = node_offsets(v_dev, [it.speaker for it in it_dev], speaker_norm, args.seed)
    y = np.tile(y_tr, n_copies)
    corpus = np.tile(c_tr, n_copies)
    head = train_head(v, y, corpus, masks, _sample_weights(corpus, y, True), args.l2, args.seed)
    with torch.no_grad():
        dev_logits = head(torch.from_numpy(v_dev[counted])).numpy()
        train_acc = float((head(torch.from_numpy(v[:n_tr])).argmax(1).numpy() == y_tr).mean())
    y_dev = y_dev[counted]          # a speaker-normalised member abstains on each speaker's first utterance
    report = calibrate_report(dev_logits, y_dev, fitted_on=f"dev speakers {args.dev_speakers}" +
                              (" in the node's order (a running reference per speaker)" if speaker_norm else ""))
    dev_metrics = metrics_from_predictions(y_dev, dev_logits.argmax(1))
    member = kind.speaker_member(speaker_norm) if speaker_norm else kind.member()
    member.encoder = encoder
    member.head = head
    input_spec = {"features": FeatureSpec().to_dict(), "min_seconds": 0.3, **kind.input_spec()}
    if speaker_norm:
        input_spec[kind.name]["speaker_window"] = speaker_norm
    metrics = {"dev": dev_metrics, "train_clean_accuracy": round(train_acc, 4), "n_train": int(len(y_tr)),
               "n_dev": int(len(y_dev)), "copies": int(n_copies)}
    if loso:
        perturbed = None
        if loso_perturb:       # the corpus's training utterances under the perturbation, as the node cuts them
            mine = np.flatnonzero(c_tr == loso_ci)
            perturbed = np.full((3,) + v_tr.shape[1:], np.nan, np.float32)
            for s in range(3):
                waves = [node_cut(perturb_voice(w_tr[i], 16000, loso_perturb, s, k)[0]) for k, i in enumerate(mine)]
                perturbed[s, mine] = _pooled(encoder, waves, f"{'+'.join(loso_perturb)} seed {s}")
        metrics["loso"] = {"corpus": loso, **leave_one_speaker_out(
            v_tr, v, y_tr, c_tr, spk_tr, loso_ci, masks, args.l2,
            args.seed, speaker_norm, group=loso_group, perturbed=perturbed, perturb_name="+".join(loso_perturb))}
    save_checkpoint(args.out, kind="voice", arch=kind.speaker_arch if speaker_norm else kind.arch, model=member,
                    input_spec=input_spec,
                    config={"args": args_config(args), "model": {}}, metrics=metrics,
                    extra={"calibration": report})
    out = {"out": args.out, "dev_accuracy": round(float(dev_metrics["accuracy"]), 4),
           "train_clean_accuracy": round(train_acc, 4), "temperature": report["temperature"],
           "ece_before": report["ece_before"], "ece_after": report["ece_after"],
           "labels": [LABELS[i] for i in sorted({int(t) for t in y_tr})]}
    if loso:
        out["loso"] = metrics["loso"]
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))
