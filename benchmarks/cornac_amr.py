"""Cornac 3.0.1's VBPR and AMR on an advorch ranking dataset, scored with the AMR paper's protocol.

The Cornac side of issue 19's side-by-side. It runs only inside the benchmark's own environment
(bash benchmarks/cornac_env.sh, then benchmarks/.venv-cornac/bin/python); it imports stdlib,
numpy, pyarrow, torch (through Cornac) and cornac, never advorch. Cornac is no dependency of
advorch.

    benchmarks/.venv-cornac/bin/python benchmarks/cornac_amr.py --data DIR --seeds 1 --out r.json

Data: DIR is a folder written by `advorch preprocess interactions`: manifest.json, the Parquet
parts of the splits train / val / test (columns user, label = item index, id, timestamp) and the
side file item_features.npy (float32, items x D, row k = item k).

Training: a cornac.data.Dataset of the train pairs (rating 1) whose user and item maps are the
identity over all of the manifest's users and items, as Cornac's own evaluation methods build it
with exclude_unknowns=False: Cornac's indices are ours, its negatives are drawn uniformly from all
items outside the user's train pairs (as advorch draws them), and an item with no train pair is
scored by the model as it stands (its latent vector only ever trained as a negative, plus its
features). The features go in through an ImageModality (normalized=True by default, as in Cornac's
VBPR and AMR examples: (F - min F) / max(F - min F) over the whole matrix).

Timing: Cornac's fit loops over epochs with one tqdm bar per epoch, opened just before the
epoch's batch loop and closed just after it. This script hands Cornac's VBPR and AMR modules a
tqdm that notes the wall time from open to close, so epoch_ms is the median of the per-epoch
times of the fit itself: negative sampling and every training step, without Cornac's setup
(tensor copies, initialisation) and without evaluation. Cornac's code is not changed.

Evaluation (Tang et al., AMR §5.1, the protocol advorch uses): for each test pair (u, i), 999
negatives drawn uniformly with replacement (numpy Generator seeded with --eval-seed, the same
candidates for every model and seed) from the items u has no pair with in any split; rank = how
many negatives score >= the held-out item; HR@N = mean(rank < N), NDCG@N = mean([rank < N] /
log2(rank + 2)), N = 5, 10, 20. Scores come from the model's own score(user_idx) over all items.
The same numbers on the val split are written as val_* (for choosing settings on validation).

--seeds 3 runs seeds 0, 1, 2; --seeds 4,7 runs seeds 4 and 7.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

CUTOFFS = (5, 10, 20)


# ---------------------------------------------------------------- data

def read_split(root: Path, manifest: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 of one split, from its Parquet parts in manifest order."""
    users, items = [], []
    for part in manifest["splits"][split]["parts"]:
        table = pq.read_table(root / part["path"], columns=["user", "label"])
        users.append(table.column("user").to_numpy().astype(np.int64))
        items.append(table.column("label").to_numpy().astype(np.int64))
    if not users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(users), np.concatenate(items)


def load(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    splits = {s: read_split(root, manifest, s) for s in ("train", "val", "test")}
    side = manifest.get("side_files", {})
    if "item_features.npy" not in side:
        sys.exit(f"{root}: the manifest lists no item_features.npy side file (VBPR / AMR need features)")
    features = np.load(root / side["item_features.npy"]).astype(np.float32)
    info = manifest.get("interactions", {})
    all_u = np.concatenate([u for u, _ in splits.values()])
    all_i = np.concatenate([i for _, i in splits.values()])
    num_users = int(info.get("users", all_u.max() + 1))
    num_items = int(info.get("items", features.shape[0]))
    if features.shape[0] != num_items:
        sys.exit(f"{root}: item_features.npy has {features.shape[0]} rows for {num_items} items")
    known = np.unique(all_u * num_items + all_i)  # every (u, i) of any split, sorted keys
    warm = np.zeros(num_items, bool)
    warm[splits["train"][1]] = True
    return {"splits": splits, "features": features, "num_users": num_users,
            "num_items": num_items, "known": known, "warm": warm}


def sample_negatives(users: np.ndarray, known: np.ndarray, num_items: int, count: int,
                     rng: np.random.Generator) -> np.ndarray:
    """(B, count) items drawn uniformly (with replacement) from those each user has no pair with."""
    out = rng.integers(0, num_items, size=(len(users), count))

    def hits(cands: np.ndarray, us: np.ndarray) -> np.ndarray:
        keys = us[:, None] * num_items + cands
        at = np.searchsorted(known, keys).clip(max=len(known) - 1)
        return known[at] == keys

    hit = hits(out, users)
    for _ in range(1000):
        if not hit.any():
            return out
        rows, cols = np.nonzero(hit)
        out[rows, cols] = rng.integers(0, num_items, size=len(rows))
        hit = hits(out, users)
    raise ValueError("a user has a pair with (almost) every item: no negatives to sample")


def metrics(ranks: np.ndarray, prefix: str = "") -> dict[str, float]:
    r = ranks.astype(np.float64)
    out = {}
    for n in CUTOFFS:
        hit = r < n
        out[f"{prefix}hr_{n}"] = float(hit.mean()) if len(r) else 0.0
        out[f"{prefix}ndcg_{n}"] = float((hit / np.log2(r + 2)).mean()) if len(r) else 0.0
    return out


def evaluate(model, users: np.ndarray, items: np.ndarray, cands: np.ndarray, prefix: str,
             warm: np.ndarray) -> dict[str, float]:
    """HR / NDCG of the held-out items against their sampled negatives, from model.score(u)."""
    ranks = np.empty(len(users), np.int64)
    for row, (u, i) in enumerate(zip(users, items, strict=True)):
        s = np.asarray(model.score(int(u)), dtype=np.float64)  # all items, Cornac index = ours
        ranks[row] = int((s[cands[row]] >= s[i]).sum())
    out = metrics(ranks, prefix)
    cold = ~warm[items]
    if prefix == "" and cold.any():
        out["cold_test_pairs"] = int(cold.sum())
        out.update({f"cold_{k}": v for k, v in metrics(ranks[cold]).items() if k.endswith("_10")})
        out.update({f"warm_{k}": v for k, v in metrics(ranks[~cold]).items() if k.endswith("_10")})
    return out


# ---------------------------------------------------------------- timing

EPOCH_SECONDS: list[float] = []


def clock_epochs() -> None:
    """Give Cornac's VBPR and AMR modules a tqdm that notes each epoch bar's open → close time."""
    import cornac.models.amr.recom_amr as amr_mod
    import cornac.models.vbpr.recom_vbpr as vbpr_mod

    real = vbpr_mod.tqdm

    class EpochClock:
        def __init__(self, *args, **kwargs):
            self._bar = real(*args, **kwargs)
            self._t0 = time.perf_counter()

        def update(self, *args, **kwargs):
            return self._bar.update(*args, **kwargs)

        def set_postfix(self, *args, **kwargs):
            return self._bar.set_postfix(*args, **kwargs)

        def close(self):
            EPOCH_SECONDS.append(time.perf_counter() - self._t0)
            return self._bar.close()

    vbpr_mod.tqdm = EpochClock
    amr_mod.tqdm = EpochClock


# ---------------------------------------------------------------- models

def train_set(data: dict, seed: int, normalized: bool):
    """Cornac Dataset of the train pairs; identity user / item maps over the whole dataset."""
    import cornac

    users, items = data["splits"]["train"]
    uid_map = OrderedDict((u, u) for u in range(data["num_users"]))
    iid_map = OrderedDict((i, i) for i in range(data["num_items"]))
    uir = [(int(u), int(i), 1.0) for u, i in zip(users, items, strict=True)]
    ds = cornac.data.Dataset.build(uir, fmt="UIR", global_uid_map=uid_map, global_iid_map=iid_map,
                                   seed=seed)
    assert ds.num_items == data["num_items"] and ds.num_users == data["num_users"]
    image = cornac.data.ImageModality(features=data["features"], ids=list(range(data["num_items"])),
                                      normalized=normalized)
    image.build(id_map=ds.iid_map)
    ds.add_modalities(item_image=image)
    return ds


def make_model(name: str, args: argparse.Namespace, seed: int):
    import cornac

    common = dict(k=args.k_gamma, k2=args.k_theta, n_epochs=args.epochs, batch_size=args.batch,
                  learning_rate=args.lr, lambda_w=args.lambda_w, lambda_b=args.lambda_b,
                  lambda_e=args.lambda_e, use_gpu=False, verbose=False, seed=seed)
    if name == "vbpr":
        return cornac.models.VBPR(name="VBPR", **common), common
    common = {**common, "k": args.amr_k if args.amr_k else args.k_gamma,
              "learning_rate": args.amr_lr if args.amr_lr else args.lr,
              "lambda_adv": args.lambda_adv}
    return cornac.models.AMR(name="AMR", **common), common


def run(args: argparse.Namespace) -> dict:
    import cornac
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    clock_epochs()
    data = load(Path(args.data))
    cand_rng = np.random.default_rng(args.eval_seed)
    evals = {}
    for split in ("val", "test"):  # one candidate set per split, shared by every model and seed
        u, i = data["splits"][split]
        evals[split] = (u, i, sample_negatives(u, data["known"], data["num_items"], args.negatives,
                                               cand_rng))
    rows = []
    for seed in args.seed_list:
        for name in args.models:
            torch.manual_seed(seed)
            ds = train_set(data, seed, args.normalized)
            model, params = make_model(name, args, seed)
            EPOCH_SECONDS.clear()
            t0 = time.perf_counter()
            model.fit(ds)
            fit_s = time.perf_counter() - t0
            epochs_s = list(EPOCH_SECONDS)
            assert len(epochs_s) == args.epochs, (len(epochs_s), args.epochs)
            t1 = time.perf_counter()
            row = {"model": f"cornac_{name}", "seed": seed,
                   "epoch_ms": 1000 * statistics.median(epochs_s)}
            row.update(evaluate(model, *evals["test"], "", data["warm"]))
            row.update(evaluate(model, *evals["val"], "val_", data["warm"]))
            eval_s = time.perf_counter() - t1
            row["timing"] = {
                "epoch_ms_median": 1000 * statistics.median(epochs_s),
                "epoch_ms_mean": 1000 * statistics.fmean(epochs_s),
                "epoch_ms_first": 1000 * epochs_s[0],
                "epoch_ms_min": 1000 * min(epochs_s),
                "fit_s": fit_s, "setup_s": fit_s - sum(epochs_s), "eval_s": eval_s,
                "batches_per_epoch": ds.num_batches(args.batch),
                "method": "per-epoch wall time inside Cornac's fit (tqdm bar open -> close), median"}
            row["settings"] = {
                **{k: v for k, v in params.items() if k not in ("verbose", "seed")},
                "normalized_features": args.normalized, "feature_dim": int(data["features"].shape[1]),
                "users": data["num_users"], "items": data["num_items"],
                "train_pairs": int(len(data["splits"]["train"][0])),
                "negatives": args.negatives, "eval_seed": args.eval_seed,
                "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                "cold_items": "scored by the model (identity item map over all items: latent vector "
                              "trained only as a negative, plus features)"}
            if name == "amr":
                row["settings"]["unused_by_cornac_amr"] = ["k2", "lambda_b"]
            rows.append(row)
            print(f"cornac_{name} seed {seed}: HR@10 {row['hr_10']:.4f} NDCG@10 {row['ndcg_10']:.4f}"
                  f" (val {row['val_hr_10']:.4f} / {row['val_ndcg_10']:.4f}) epoch "
                  f"{row['epoch_ms']:.0f} ms x {args.epochs}, fit {fit_s:.1f} s, eval {eval_s:.1f} s",
                  flush=True)
    return {"cornac_version": cornac.__version__, "data": str(Path(args.data).resolve()),
            "rows": rows}


def seed_list(text: str) -> list[int]:
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    return list(range(int(text)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="advorch ranking dataset folder (manifest.json)")
    ap.add_argument("--k", type=int, default=64,
                    help="total embedding size: VBPR k = k2 = K/2 (the issue's 32+32); AMR k = K/2 "
                         "(Cornac's AMR has one user vector of size k for both terms; its k2 is unused)")
    ap.add_argument("--amr-k", type=int, default=0, help="AMR's k instead of K/2")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=50, help="Cornac's default n_epochs")
    ap.add_argument("--lr", type=float, default=0.005, help="Cornac's default")
    ap.add_argument("--amr-lr", type=float, default=0.0, help="AMR's learning rate instead of --lr")
    ap.add_argument("--lambda-w", type=float, default=0.01, help="Cornac's default")
    ap.add_argument("--lambda-b", type=float, default=0.01, help="Cornac's default (AMR ignores it)")
    ap.add_argument("--lambda-e", type=float, default=0.0, help="Cornac's default")
    ap.add_argument("--lambda-adv", type=float, default=1.0, help="Cornac's default")
    ap.add_argument("--no-normalize", dest="normalized", action="store_false",
                    help="pass the raw features (default: ImageModality(normalized=True))")
    ap.add_argument("--models", default="vbpr,amr")
    ap.add_argument("--seeds", default="1", help="N → seeds 0..N-1; a,b,c → those seeds")
    ap.add_argument("--negatives", type=int, default=999)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                    help="torch threads (default: $OMP_NUM_THREADS, else torch's own default)")
    ap.add_argument("--out", help="JSON path for the rows")
    args = ap.parse_args()
    if args.k % 2:
        ap.error("--k must be even (split as k + k2)")
    args.k_gamma = args.k_theta = args.k // 2
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(args.models) - {"vbpr", "amr"}:
        ap.error("--models takes vbpr and/or amr")
    args.seed_list = seed_list(args.seeds)
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if not all(math.isfinite(r["hr_10"]) for r in result["rows"]):
        sys.exit("non-finite metrics")


if __name__ == "__main__":
    main()
