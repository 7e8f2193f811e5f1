"""Purchase prediction on the DIGINETICA sample: test AUC of the sequence regimes, N seeds.

Every row trains through `advorch.trainers.launch.train` (Ray Train workers, early
stopping on validation AUC, test AUC of the best epoch) on the shards of
configs/diginetica.toml (pages read as product categories, Word2Vec 120-d init, 50/50
stratified split, class-weighted loss). The sample is small: 1,194 train sessions with 55
purchases, 69 purchases among the 1,493 test sessions, so expect a wide spread.

    .venv/bin/python benchmarks/diginetica_auc.py --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from seeds import configs, run_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGI = ROOT.parent / "shared" / "data" / "clickstream" / "diginetica"
# ε on the scale of the embeddings: Word2Vec vectors start at norm ≈ 0.05 and are fine-tuned
EPS = "regime.epsilon=0.5"
SF, CAT = 'regime.filter="sf"', 'regime.filter="cat"'
ROWS = [
    ("lstm", "LSTM", ['model.name="lstm"', 'regime.name="clean"']),
    ("attention", "LSTM-Attention", ['regime.name="clean"']),
    ("attention_at", "Attention-aware AT", ['regime.name="attention_at"', EPS]),
    ("attention_at_sf", "Attention-aware AT (SF)", ['regime.name="attention_at"', SF, EPS]),
    ("attention_at_cat", "Attention-aware AT (CAT)", ['regime.name="attention_at"', CAT, EPS]),
    ("at_vat_cat", "Attention-aware AT+VAT (CAT)", ['regime.name="at_vat"', CAT, EPS]),
]
BASE = ["regime.lam=1.0", "regime.keep_ratio=0.8", "regime.gamma=0.2", "mlflow.log_model=false",
        'mlflow.experiment="diginetica-auc"']  # K = 80% and γ = 0.2: the paper's clickstream settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rows", default=",".join(k for k, *_ in ROWS))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    wanted = args.rows.split(",")

    from advorch.config import load_config
    from advorch.pipelines import clickstream
    from advorch.trainers.launch import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        data = [f'data.output="{tmp}/shards"',
                f'data.clickstream.events=["{DIGI}/sample_train-item-views.csv"]',
                f'data.clickstream.purchases=["{DIGI}/train-purchases.csv"]',
                f'data.clickstream.item_map.path="{DIGI}/product-categories.csv"']
        cfg0 = load_config(ROOT / "configs" / "diginetica.toml", data)
        clickstream.run(cfg0.data)
        init_ray()

        cfg_for = configs(ROOT / "configs" / "diginetica.toml", data + BASE, args.workers,
                          f"{tmp}/runs", "digi")

        def write(rows: list, lines: list[str]) -> None:
            notes = "\n".join([
                "| method | test AUC (mean ± std) | min – max | seeds |", "|---|---|---|---|", *lines, "",
                "- configs/diginetica.toml (LSTM-Attention hidden 64, embeddings 120 from Word2Vec on "
                "categories, Adam 3e-3, ≤ 20 epochs, patience 5 on val AUC, class-weighted loss) with "
                + ", ".join(BASE[:3]) + f", {EPS}; {args.workers} Ray Train workers.",
                "- 2,986 sessions, 138 purchases; 50/50 stratified split, val = 20% of train (14 purchases).",
            ])
            print(notes, flush=True)
            report.write("diginetica_auc", rows, notes)

        run_rows([r for r in ROWS if r[0] in wanted], args.seeds, cfg_for, "test_auc", "auc", write)

if __name__ == "__main__":
    main()
