"""The ranking task and the recommenders (trainers/tasks/ranking.py, trainers/models/recommenders.py)
on the real Amazon "Industrial & Scientific" interactions with their real 512-d image features,
built once by the interactions pipeline: BPR's negatives, AMR's per-item perturbation (eq. 11-12),
λ = 0 is VBPR, cold items, the leave-one-out metrics, and training + serving on Ray."""

from __future__ import annotations

import json
import math

import pytest
import torch

from advorch.config import ExperimentConfig, load_config
from advorch.pipelines import interactions
from advorch.pipelines.spec import read_spec
from advorch.trainers.adversarial import build_regime
from advorch.trainers.adversarial.base import clean_pass
from advorch.trainers.data import batches, load_slice
from advorch.trainers.loop import build, setup_worker, train_epoch
from advorch.trainers.tasks.ranking import Pairs, feature_attack, metrics, sample_negatives
from tests.conftest import SHARED_DATA, repo_config, run_cli

SCI = SHARED_DATA / "recsys" / "amazon_scientific"
pytestmark = pytest.mark.skipif(not (SCI / "Scientific.feat3CLS").is_file(),
                                reason=f"real recsys data not found under {SCI}")


@pytest.fixture(scope="module")
def sci(tmp_path_factory):
    """(config path, dataset) of amazon_scientific with image features, built once."""
    tmp = tmp_path_factory.mktemp("sci")
    config, out = repo_config("amazon_scientific", tmp), tmp / "data"
    interactions.run(load_config(config, [f'data.output="{out}"']).data)
    return config, str(out)


def cfg_for(sci, *overrides: str) -> ExperimentConfig:
    config, data = sci
    return load_config(config, [f'data.output="{data}"', "train.workers=1", *overrides])


def first_batch(w, seed: int = 3) -> dict:
    batch = next(batches(w.train, 512, w.device, steps=1, shuffle=True, seed=seed))
    return w.task.prepare(batch, seed)


def test_negatives_are_never_a_users_train_positive(sci):
    w = setup_worker(cfg_for(sci), sci[1])
    users = w.train.inputs["user"]
    neg = sample_negatives(users, w.task.train, w.task.num_items, 5, torch.Generator().manual_seed(0))
    assert not w.task.train.contains(users[:, None], neg).any()
    assert neg.min() >= 0 and neg.max() < w.task.num_items and len(neg.unique()) > 1000
    # the evaluation candidates avoid every known pair, held-out items included
    val = load_slice(read_spec(sci[1]), "val")
    cands = sample_negatives(val.inputs["user"], w.task.known, w.task.num_items, 999, torch.Generator())
    assert not w.task.known.contains(val.inputs["user"][:, None], cands).any()
    b = first_batch(w)  # the batch's distinct items: positives and negatives, once each
    assert torch.equal(b["items"][b["pos_at"]], b["label"]) and torch.equal(b["items"][b["neg_at"]], b["neg"])
    assert len(b["items"]) == len(torch.cat([b["label"], b["neg"]]).unique())


def test_amr_perturbs_each_item_by_exactly_epsilon_and_raises_the_bpr_loss(sci):
    """Δ_i = ε·Γ_i/‖Γ_i‖ per distinct item of the batch (eq. 11-12, Γ of the summed batch loss);
    the perturbed BPR loss is above the clean one on a fixed batch."""
    cfg = cfg_for(sci, 'regime.name="at"', 'regime.inputs=["features"]', "regime.epsilon=0.5")
    w = setup_worker(cfg, sci[1])
    for epoch in range(2):  # a model that has learnt something
        train_epoch(w, epoch)
    b = first_batch(w)
    w.model.eval()
    cp = clean_pass(w.model, w.task, b)
    term = w.regime.terms[0]
    r = term.perturbation(cp)["features"]
    assert r.shape == (len(b["items"]), 512)
    assert torch.allclose(r.norm(dim=1), torch.full((len(r),), 0.5), atol=1e-5)
    with torch.no_grad():
        adv = w.task.loss(cp.perturbed({"features": r}), b)
    assert float(adv) > float(cp.loss) + 1e-4


def test_table3_attack_moves_every_item_by_epsilon_and_lowers_test_ndcg(sci):
    """AMR §5.4: Δ_i = ε·Γ_i/‖Γ_i‖ from the BPR loss over all train pairs, on a trained VBPR."""
    w = setup_worker(cfg_for(sci, "train.lr=0.01"), sci[1])
    for epoch in range(3):
        train_epoch(w, epoch)
    delta = feature_attack(w.model, w.task, w.train, 1.0)
    norms = delta.norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.tensor(1.0), atol=1e-5) and (norms > 0).sum() > 1500
    test = load_slice(read_spec(sci[1]), "test")
    clean = w.task.evaluate(w.model, test, 1024, w.device)["ndcg_10"]
    attacked = w.task.evaluate(w.model, test, 1024, w.device, perturb=lambda _: delta)["ndcg_10"]
    rand = feature_attack(w.model, w.task, w.train, 1.0, random=True)
    randomly = w.task.evaluate(w.model, test, 1024, w.device, perturb=lambda _: rand)["ndcg_10"]
    assert attacked < randomly and attacked < clean


def test_amr_with_lambda_zero_trains_exactly_vbpr(sci):
    """λ = 0: the adversary has no impact and AMR degrades to VBPR (eq. 7): same seed, same parameters."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU embedding backward sums in thread order: one thread is bit-exact
    states = []
    amr = ['regime.name="at"', 'regime.inputs=["features"]', "regime.lam=0.0"]
    for regime in (['regime.name="clean"'], amr):
        w = setup_worker(cfg_for(sci, "model.l2=0.001", *regime), sci[1])
        train_epoch(w, 0)
        states.append({k: v.clone() for k, v in w.model.state_dict().items()})
    torch.set_num_threads(threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[1]["project.weight"], torch.zeros_like(states[1]["project.weight"]))


def test_cold_items_are_scored_from_their_features_alone(sci):
    cfg = cfg_for(sci)
    spec = read_spec(sci[1])
    model, task, _ = build(cfg, spec)
    cold = (~task.warm).nonzero()[:, 0]
    assert len(cold) == spec.manifest["interactions"]["cold_items"] > 0
    with torch.no_grad():
        model.item.weight.normal_()  # whatever q_i and b_i hold, a cold item's score ignores them
        model.bias.weight.normal_()
        model.project.weight.normal_()
        users = torch.arange(4)
        s = model.score(users, cold.expand(4, -1))
        expect = model.user(users) @ model.project(model.features[cold]).T
    assert torch.allclose(s, expect, atol=1e-5)


def test_leave_one_out_metrics_on_known_ranks():
    m = metrics(torch.tensor([0, 4, 9, 10, 25]))
    assert m["hr_5"] == pytest.approx(2 / 5) and m["hr_10"] == pytest.approx(3 / 5)
    assert m["hr_20"] == pytest.approx(4 / 5)
    assert m["ndcg_10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 5)
    p = Pairs(torch.tensor([0, 0, 1]), torch.tensor([2, 5, 2]), 10)
    assert p.contains(torch.tensor([[0], [1]]), torch.tensor([[2, 3, 5], [2, 5, 0]])).tolist() == [
        [True, False, True], [True, False, False]]


def test_apr_perturbs_user_and_item_embeddings_per_row(sci):
    cfg = cfg_for(sci, 'model.name="mf_bpr"', 'regime.name="at"', "regime.epsilon=0.3")
    w = setup_worker(cfg, sci[1])
    b = first_batch(w)
    cp = clean_pass(w.model, w.task, b)
    r = build_regime(cfg.regime).terms[0].perturbation(cp)
    assert set(r) == {"users", "items"}
    assert r["users"].shape == (len(b["users"]), 64) and r["items"].shape == (len(b["items"]), 64)
    assert torch.allclose(r["users"].norm(dim=1), torch.tensor(0.3), atol=1e-5)


@pytest.mark.ray
def test_amr_trains_on_ray_warm_started_from_vbpr_and_serves_top_items(sci, tmp_path):
    """`advorch train` on Ray: VBPR first, AMR from its best weights (Algorithm 1 line 1), test HR/NDCG
    in MLflow, and the logged model gives each user 10 items it has no train pair with."""
    import mlflow

    config, data = sci
    uri = f"sqlite:///{tmp_path}/ml.db"
    args = ["train", str(config), "--set", f'data.output="{data}"', "--set", "train.epochs=2",
            "--set", 'regime.name="at"', "--set", 'regime.inputs=["features"]', "--set", "regime.epsilon=0.5",
            "--set", "regime.warm_start=true", "--set", "train.workers=2",
            "--mlflow-uri", uri, "--set", f'train.storage="{tmp_path}/runs"']  # not MLFLOW_TRACKING_URI
    proc = run_cli(*args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("advorch").experiment_id])
    m = run.data.metrics
    assert 0 < m["test_hr_10"] <= 1 and 0 < m["test_ndcg_10"] <= m["test_hr_10"]
    steps = [x.step for x in client.get_metric_history(run.info.run_id, "val_ndcg_10")]
    assert steps == list(range(4))  # stage 2 (AMR) follows stage 1 (VBPR)
    from advorch import tracking

    model = tracking.load_model(uri, run.data.tags["advorch.model_uri"])
    users = torch.arange(5)
    top = model(users)
    assert top.shape == (5, 20)  # the largest cutoff; `registry predict --top` takes fewer
    spec = read_spec(data)
    task = build(ExperimentConfig.model_validate(json.loads(
        mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.json"))), spec)[1]  # URI set above
    assert not task.train.contains(users[:, None], top).any()

    # the registry: `advorch registry predict NAME@ALIAS users.txt` → each user's top items (raw ids)
    from advorch.tuning.registry import recommend, register

    register(uri, run.info.run_id, "sci-amr")
    raw_users = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/dataset/users.json"))
    raw_items = set(json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/dataset/items.json")))
    (tmp_path / "users.txt").write_text("\n".join(raw_users[:3]) + "\n")
    proc = run_cli("registry", "predict", "sci-amr@candidate", str(tmp_path / "users.txt"), "--top", "5",
                   "--mlflow-uri", uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split() for line in proc.stdout.strip().splitlines()]  # user, then its items
    assert [u for u, *_ in lines] == raw_users[:3]
    assert all(len(items) == 5 and set(items) <= raw_items for _, *items in lines)
    (tmp_path / "strangers.txt").write_text("NOT-A-USER\n")
    with pytest.raises(LookupError, match="NOT-A-USER"):  # the CLI prints it and exits 1 (cli.fail)
        recommend(uri, "sci-amr@candidate", str(tmp_path / "strangers.txt"))

    # AMR Table 3 through `advorch evaluate`: NDCG@10 under adversarial and random feature noise
    proc = run_cli("evaluate", run.info.run_id, "--eps", "0.1,0.2", "--mlflow-uri", uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ndcg_10_drop" in proc.stdout and "random" in proc.stdout
    logged = client.get_run(run.info.run_id).data.metrics
    assert {"robust_at_eps0.1_ndcg_10_drop", "robust_random_eps0.2_ndcg_10"} <= set(logged)


def test_the_amr_sweep_config_checks_against_the_dataset(sci, tmp_path):
    """configs/amazon_scientific_sweep.toml (Fig. 6-7: ε × λ) passes `advorch tune`'s checks, and a
    classification metric on a ranking dataset is refused, naming the ranking metrics."""
    from advorch.config import ConfigError
    from advorch.trainers.launch import check_experiment

    config = repo_config("amazon_scientific_sweep", tmp_path)
    cfg = load_config(config, [f'data.output="{sci[1]}"'])
    check_experiment(cfg, sci[1])
    assert set(cfg.tune.space) == {"regime.epsilon", "regime.lam"}
    with pytest.raises(ConfigError, match='"val_ndcg_10" or "val_hr_10"'):
        check_experiment(load_config(config, ['train.metric="val_accuracy"']), sci[1])


def test_full_ranking_is_harder_than_999_sampled_negatives(sci):
    """train.eval_negatives = 0 ranks the held-out item among all items but the user's other
    positives: ranks span the catalogue and every cutoff's hit rate is below the sampled protocol's."""
    w = setup_worker(cfg_for(sci, 'model.name="mf_bpr"', "train.lr=0.01"), sci[1])
    for epoch in range(2):
        train_epoch(w, epoch)
    test = load_slice(read_spec(sci[1]), "test")
    sampled = w.task.evaluate(w.model, test, 1024, w.device)
    w.task.negatives = 0
    ranks = w.task.ranks(w.model, test, 1024, w.device)
    full = w.task.evaluate(w.model, test, 1024, w.device)
    assert 0 <= int(ranks.min()) and int(ranks.max()) < w.task.num_items and int(ranks.max()) > 999
    assert all(full[f"hr_{n}"] < sampled[f"hr_{n}"] for n in (5, 10, 20)) and full["hr_10"] > 0
