"""Train the face-expression CNN (``emotion-train face``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.face.model import ARCH, DEFAULT_INPUT, FaceCNN
from ..core.labels import LABELS
from ..core.modelio import resolve_device, save_checkpoint
from .augment import augment_faces
from .common import (Checkpointer, args_config, metrics_from_predictions, seed_everything, stratified_holdout,
                     write_json)
from .face_data import load_faces


LIGHT_AUG = {"max_rot_deg": 8.0, "scale": (0.93, 1.07), "max_shift": 0.06, "erase_p": 0.15}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="training faces: folder per class, or FER2013 CSV")
    p.add_argument("--val", default=None, help="faces reported on each epoch (not used for selection)")
    p.add_argument("--out", required=True, help="where to write the trained model (.pt)")
    p.add_argument("--run-dir", default="runs/face", help="checkpoints, history and config")
    p.add_argument("--epochs", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.08, help="peak learning rate (one-cycle SGD)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--widths", default="32,64,128,256")
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--dev-fraction", type=float, default=0.1,
                   help="stratified part of --data held out (fusion training and monitoring)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/emotion_ros"))
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--init-from", default=None,
                   help="start from the weights of this run checkpoint (last.pt) with a fresh schedule")
    p.add_argument("--light-aug", action="store_true",
                   help="milder augmentation (smaller rotations/shifts, less erasing), e.g. for a fine-tuning phase")
    p.add_argument("--eval-every", type=int, default=1, help="measure dev/val every N epochs (and the last)")
    p.add_argument("--pct-start", type=float, default=0.2, help="warm-up fraction of the one-cycle schedule")
    p.add_argument("--limit", type=int, default=0, help="use only N training images (smoke tests)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (data and augmentation on it too)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--time-budget-min", type=float, default=0.0,
                   help="fit the schedule into this many minutes: after the first epoch, lower --epochs to what "
                        "fits (the one-cycle schedule is rebuilt for the new length); 0 = no limit")
    p.add_argument("--snapshot", action="store_true",
                   help="also write --out at every measured epoch (a model file survives a cut-off run)")
    p.add_argument("--teacher", default=None,
                   help="a trained face model file (.pt, any widths) to distil from (knowledge distillation)")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--kd-temp", type=float, default=3.0, help="softmax temperature of the distillation loss")


def evaluate_arrays(net, images: np.ndarray, labels: np.ndarray, batch: int = 512, flip: bool = True):
    net.eval()
    preds = []
    dev = next(net.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).to(dev).float().div_(255).unsqueeze(1)
            x = (x - DEFAULT_INPUT["mean"]) / DEFAULT_INPUT["std"]
            p = torch.softmax(net(x), 1)
            if flip:
                p = p + torch.softmax(net(torch.flip(x, dims=[3])), 1)
            preds.append(p.argmax(1).cpu().numpy())
    return metrics_from_predictions(labels, np.concatenate(preds) if preds else [])


def load_teacher(path: str, device: torch.device) -> FaceCNN:
    """The network of a trained face model file (checked like the node checks it), in eval mode."""
    from ..core.face.model import FaceModel
    return FaceModel(path, device=str(device), flip_tta=False, fast=False).net.eval()


def one_cycle(opt, args, epochs: int, steps_per_epoch: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=epochs,
                                               steps_per_epoch=steps_per_epoch, pct_start=args.pct_start)


def save_model(args, net, config, metrics, history) -> None:
    save_checkpoint(args.out, kind="face", arch=ARCH, model=net, input_spec=dict(DEFAULT_INPUT),
                    config=config, metrics=metrics, extra={"history": history})


def export(args, net, config, x_dev, y_dev, val, history) -> dict:
    dev_metrics = evaluate_arrays(net, x_dev, y_dev)
    metrics = {"dev": {k: dev_metrics[k] for k in ("accuracy", "macro_f1", "n", "per_class_recall")}}
    if val is not None:
        vm = evaluate_arrays(net, val.images, val.labels)
        metrics["val"] = {k: vm[k] for k in ("accuracy", "macro_f1", "n", "per_class_recall")}
    save_model(args, net, config, metrics, history)
    return metrics


def run(args) -> dict:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    t0 = time.time()
    train = load_faces(args.data, cache_dir=args.cache_dir, usage="Training")
    print(f"loaded {len(train.labels)} training faces in {time.time() - t0:.1f}s; "
          f"skipped classes: {train.skipped_classes or 'none'}", flush=True)
    dev_mask = stratified_holdout(train.labels, args.dev_fraction, args.seed)
    x_tr, y_tr = train.images[~dev_mask], train.labels[~dev_mask]
    x_dev, y_dev = train.images[dev_mask], train.labels[dev_mask]
    if args.limit:
        x_tr, y_tr = x_tr[: args.limit], y_tr[: args.limit]
    val = None
    if args.val:
        val = load_faces(args.val, cache_dir=args.cache_dir, usage="PublicTest")
    widths = tuple(int(w) for w in args.widths.split(","))
    net = FaceCNN(widths=widths, embed_dim=args.embed_dim).to(device)
    steps_per_epoch = max(1, len(y_tr) // args.batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = one_cycle(opt, args, args.epochs, steps_per_epoch)
    teacher = load_teacher(args.teacher, device) if args.teacher else None
    aug_gen = gen
    if device.type == "cuda":  # augmentation drawn on the GPU
        aug_gen = torch.Generator(device=device)
        aug_gen.manual_seed(args.seed)
    config = {"args": args_config(args), "model": {"widths": list(widths), "embed_dim": args.embed_dim},
              "labels": list(LABELS), "n_train": int(len(y_tr)), "n_dev": int(len(y_dev))}
    ckpt = Checkpointer(args.run_dir)
    write_json(os.path.join(args.run_dir, "config.json"), config)
    start, history = 0, []
    if args.init_from:
        init = torch.load(args.init_from, map_location="cpu", weights_only=False)
        net.load_state_dict(init["model"] if "model" in init else init["state_dict"])
        history = [dict(h, phase=h.get("phase", "init")) for h in init.get("history", [])]
        init_cfg = os.path.join(os.path.dirname(args.init_from), "config.json")
        if os.path.isfile(init_cfg):  # keep the lineage of a multi-phase training in the saved config
            with open(init_cfg) as f:
                config["init_from_config"] = json.load(f)
            write_json(os.path.join(args.run_dir, "config.json"), config)
        print(f"initialised from {args.init_from} (epoch {init.get('epoch')})", flush=True)
    if args.resume:
        state = ckpt.load()
        if state:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, history = state["epoch"], state["history"]
            torch.set_rng_state(state["torch_rng"])
            np.random.set_state(state["numpy_rng"])
            gen.manual_seed(args.seed + start)
            if getattr(sched, "total_steps", None):  # the length a time budget settled on
                config["args"]["epochs"] = sched.total_steps // steps_per_epoch
            print(f"resumed from {ckpt.path} at epoch {start}", flush=True)
    xt = torch.from_numpy(x_tr).to(device)
    yt = torch.from_numpy(y_tr).to(device)
    amp = bool(args.amp and device.type == "cuda")
    epochs = int(config["args"]["epochs"])
    epoch = start
    t_loop = t_warm = time.time()
    while epoch < epochs:
        t_epoch = time.time()
        net.train()
        perm = torch.randperm(len(yt), generator=gen).to(device)
        tot, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"face {epoch + 1}/{epochs}", mininterval=20,
                   file=sys.stdout)
        for b in bar:
            if b == min(20, steps_per_epoch // 4):
                t_warm = time.time()
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            x = xt[idx].float().div_(255).unsqueeze(1)
            x = augment_faces(x, aug_gen, **LIGHT_AUG) if args.light_aug else augment_faces(x, aug_gen)
            x = (x - DEFAULT_INPUT["mean"]) / DEFAULT_INPUT["std"]
            y = yt[idx]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x).float()
                    tt = args.kd_temp
                    kd = F.kl_div(F.log_softmax(logits.float() / tt, 1), F.softmax(t_logits / tt, 1),
                                  reduction="batchmean") * tt * tt
                    loss = (1 - args.kd_alpha) * loss + args.kd_alpha * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot = tot + loss.detach().float() * len(y)  # kept on the device: no sync per step
            correct = correct + (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if b % 50 == 49:
                bar.set_postfix(loss=f"{float(tot) / seen:.3f}", acc=f"{int(correct) / seen:.3f}")
        tot, correct = float(tot), int(correct)
        rec = {"epoch": epoch + 1, "train_loss": tot / seen, "train_acc": correct / seen,
               "seconds": round(time.time() - t_epoch, 2)}
        if args.time_budget_min and epoch == start and epochs > epoch + 1:
            # the first epoch's pace (past its warm-up steps) sets how many fit in what is left of the budget;
            # the one-cycle schedule is rebuilt for that length
            warm = min(20, steps_per_epoch // 4)
            per_epoch = (time.time() - t_warm) * steps_per_epoch / max(1, steps_per_epoch - warm)
            left = args.time_budget_min * 60 - (time.time() - t_loop)
            fit = epoch + 1 + int(left / max(per_epoch * 1.1, 1e-6))
            new_epochs = max(epoch + 2, min(epochs, fit))
            if new_epochs != epochs:
                print(f"time budget {args.time_budget_min} min at {per_epoch:.1f} s/epoch: "
                      f"{epochs} -> {new_epochs} epochs", flush=True)
                epochs = new_epochs
                config["args"]["epochs"] = epochs
                sched = one_cycle(opt, args, epochs, steps_per_epoch)
                for _ in range((epoch + 1) * steps_per_epoch):
                    sched.step()
        measure = (epoch + 1) % max(1, args.eval_every) == 0 or epoch + 1 == epochs
        if measure:
            rec["dev_acc"] = evaluate_arrays(net, x_dev, y_dev)["accuracy"]
        if val is not None and measure:
            rec["val_acc"] = evaluate_arrays(net, val.images, val.labels)["accuracy"]
        history.append(rec)
        print(json.dumps(rec), flush=True)
        ckpt.save(epoch + 1, net, opt, sched, history)
        if measure and args.snapshot and epoch + 1 < epochs:  # a usable model file even if the run is cut off
            save_model(args, net, config, {"snapshot_epoch": epoch + 1, "dev": {"accuracy": rec["dev_acc"]}}, history)
        epoch += 1
    metrics = export(args, net, config, x_dev, y_dev, val, history)
    write_json(os.path.join(args.run_dir, "metrics.json"), metrics)
    print(json.dumps({"out": args.out, **metrics}), flush=True)
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
