"""Train the CNN + BiLSTM speech-emotion model (``emotion-train voice``).

Splits by speaker (never by file), augments waveforms (speed/pitch/tempo, noise,
gain, time shifts) and spectrograms (SpecAugment).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.labels import LABELS
from ..core.modelio import save_checkpoint
from ..core.voice.features import FeatureSpec, load_audio, trim_silence, utterance_features
from ..core.voice.model import ARCH, SpeechCNNBiLSTM
from .augment import add_noise, spec_augment
from .common import args_config, Checkpointer, metrics_from_predictions, seed_everything, write_json
from .voice_data import list_voice_data, parse_speakers, split_by_speaker


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="RAVDESS-style folder, or one folder per class")
    p.add_argument("--out", required=True)
    p.add_argument("--run-dir", default="runs/voice")
    p.add_argument("--test-speakers", default="17-20", help="held out entirely (reported only)")
    p.add_argument("--dev-speakers", default="15-16", help="held out for fusion training and monitoring")
    p.add_argument("--speaker-regex", default=None, help="speaker id from file names (non-RAVDESS data)")
    p.add_argument("--epochs", type=int, default=45)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--augment-copies", type=int, default=5, help="augmented copies of each training utterance")
    p.add_argument("--pitch-prob", type=float, default=0.3, help="probability of a pitch shift per copy")
    p.add_argument("--crop-frames", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true")


def _augment_wave(w: np.ndarray, sr: int, rng: np.random.Generator, pitch_prob: float) -> np.ndarray:
    import soxr
    out = w
    if rng.random() < 0.8:                       # speed perturbation (tempo + pitch)
        f = rng.uniform(0.88, 1.12)
        out = soxr.resample(out, sr, int(sr / f)).astype(np.float32)
    if rng.random() < pitch_prob:                # pitch only
        import librosa
        out = librosa.effects.pitch_shift(out, sr=sr, n_steps=float(rng.uniform(-2.5, 2.5))).astype(np.float32)
    if rng.random() < 0.6:
        out = add_noise(out, rng)
    out = out * (10 ** (rng.uniform(-12, 6) / 20))   # gain (before loudness normalisation)
    return np.clip(out, -1, 1).astype(np.float32)


def _batchify(feats: List[np.ndarray], crop: int, rng: np.random.Generator, train: bool):
    lens = [min(len(f), crop) if crop else len(f) for f in feats]
    t = max(lens)
    x = np.zeros((len(feats), t, feats[0].shape[1]), np.float32)
    for i, f in enumerate(feats):
        if crop and len(f) > crop:
            s = rng.integers(0, len(f) - crop + 1) if train else (len(f) - crop) // 2
            f = f[s:s + crop]
        x[i, :len(f)] = f
    return torch.from_numpy(x), torch.tensor(lens)


def predict_feats(net, feats: List[np.ndarray], batch: int = 32) -> np.ndarray:
    net.eval()
    probs = []
    order = np.argsort([len(f) for f in feats])
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x, lens = _batchify([feats[j] for j in idx], 0, None, False)
            probs.append((idx, torch.softmax(net(x, lens), 1).numpy()))
    out = np.zeros((len(feats), len(LABELS)), np.float32)
    for idx, p in probs:
        out[idx] = p
    return out


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    spec = FeatureSpec()
    kw = {"speaker_re": args.speaker_regex} if args.speaker_regex else {}
    data = list_voice_data(args.data, **kw)
    test_spk, dev_spk = parse_speakers(args.test_speakers), parse_speakers(args.dev_speakers)
    rest, test = split_by_speaker(data.items, test_spk)
    train, dev = split_by_speaker(rest, dev_spk)
    speakers = sorted({i.speaker for i in train})
    print(f"train {len(train)} utts / {len(speakers)} speakers, dev {len(dev)}, test {len(test)}", flush=True)
    t0 = time.time()

    def waves(items):
        return [trim_silence(load_audio(i.path)) for i in tqdm(items, desc="load", mininterval=10, file=sys.stdout)]

    w_train, w_dev, w_test = waves(train), waves(dev), waves(test)
    y_train = np.array([i.label for i in train])
    f_train = [utterance_features(w, spec) for w in w_train]
    mean = np.mean(np.concatenate(f_train), 0).astype(np.float32)
    std = (np.std(np.concatenate(f_train), 0) + 1e-3).astype(np.float32)

    def norm(fs):
        return [((f - mean) / std).astype(np.float32) for f in fs]

    aug_feats, aug_y = [], []
    for k in range(args.augment_copies):
        for w, y in zip(tqdm(w_train, desc=f"augment {k + 1}/{args.augment_copies}", mininterval=10,
                             file=sys.stdout), y_train):
            aug_feats.append(utterance_features(_augment_wave(w, spec.sample_rate, rng, args.pitch_prob), spec))
            aug_y.append(y)
    X = norm(f_train) + norm(aug_feats)
    Y = np.concatenate([y_train, np.array(aug_y, dtype=np.int64)]) if aug_y else y_train
    X_dev = norm([utterance_features(w, spec) for w in w_dev])
    X_test = norm([utterance_features(w, spec) for w in w_test])
    y_dev = np.array([i.label for i in dev])
    y_test = np.array([i.label for i in test])
    print(f"features ready in {time.time() - t0:.0f}s: {len(X)} training sequences", flush=True)

    model_cfg = {"conv_channels": [64, 128, 128], "lstm_hidden": 96, "embed_dim": 128}
    net = SpeechCNNBiLSTM(n_mels=spec.n_mels, conv_channels=tuple(model_cfg["conv_channels"]),
                          lstm_hidden=model_cfg["lstm_hidden"], embed_dim=model_cfg["embed_dim"])
    steps = max(1, len(X) // args.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps,
                                                pct_start=0.15)
    config = {"args": args_config(args), "model": model_cfg, "features": spec.to_dict(), "labels": list(LABELS),
              "train_speakers": speakers, "dev_speakers": dev_spk, "test_speakers": test_spk,
              "n_train": len(train), "n_train_augmented": len(X)}
    ckpt = Checkpointer(args.run_dir)
    write_json(os.path.join(args.run_dir, "config.json"), config)
    start, history = 0, []
    if args.resume and (state := ckpt.load()):
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
        gen.manual_seed(args.seed + start)
        rng = np.random.default_rng(args.seed + start)
        print(f"resumed at epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        net.train()
        perm = torch.randperm(len(X), generator=gen).numpy()
        tot, correct, seen = 0.0, 0, 0
        for b in tqdm(range(steps), desc=f"voice {epoch + 1}/{args.epochs}", mininterval=20, file=sys.stdout):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            x, lens = _batchify([X[i] for i in idx], args.crop_frames, rng, True)
            x = spec_augment(x, gen)
            y = torch.from_numpy(Y[idx])
            logits = net(x, lens)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        rec = {"epoch": epoch + 1, "train_loss": round(tot / seen, 4), "train_acc": round(correct / seen, 4),
               "dev_acc": metrics_from_predictions(y_dev, predict_feats(net, X_dev).argmax(1))["accuracy"]
               if len(X_dev) else None,
               "test_acc": metrics_from_predictions(y_test, predict_feats(net, X_test).argmax(1))["accuracy"]
               if len(X_test) else None}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        ckpt.save(epoch + 1, net, opt, sched, history)
    metrics = {}
    for name, xs, ys in (("dev", X_dev, y_dev), ("test", X_test, y_test)):
        if len(xs):
            m = metrics_from_predictions(ys, predict_feats(net, xs).argmax(1))
            metrics[name] = {k: m[k] for k in ("accuracy", "macro_f1", "n", "per_class_recall")}
    input_spec = {"features": spec.to_dict(), "mean": mean.tolist(), "std": std.tolist(), "min_seconds": 0.3,
                  "trim_top_db": 35.0}
    save_checkpoint(args.out, kind="voice", arch=ARCH, model=net, input_spec=input_spec, config=config,
                    metrics=metrics, extra={"history": history})
    write_json(os.path.join(args.run_dir, "metrics.json"), metrics)
    print(json.dumps({"out": args.out, **metrics}), flush=True)
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
