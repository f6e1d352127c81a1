"""The training pieces: config and run keys (bench/config.py), the LR schedule, checkpoints and evaluation counts
(bench/engine.py). Evaluation is checked at world sizes 1, 2 and 3 by launching this file as a worker:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 3 tests/test_training.py eval-count DATA
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

if __name__ == "__main__":  # the worker below runs as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

from bench import ablations, checkpoint, cli, config, engine, run_state  # noqa: E402
from bench.cli import parse_args  # noqa: E402
from bench.config import PRESETS, RunConfig, expand  # noqa: E402



def test_every_field_is_one_option_with_help():
    parser = cli.build_parser()
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(options) == {f.name for f in dataclasses.fields(RunConfig)}
    for f in dataclasses.fields(RunConfig):
        assert f.metadata["help"] and options[f.name].option_strings[0] == "--" + f.name.replace("_", "-")


def test_choices_match_the_modules_that_implement_them():
    import allconv

    assert config.INITS == allconv.INITS and PRESETS["paper"].init == allconv.DEFAULT_INIT


def test_paper_preset_is_the_papers_protocol():
    cfg = PRESETS["paper"]
    assert (cfg.epochs, cfg.lr_drops, cfg.lrs) == (350, (200, 250, 300), (0.25, 0.1, 0.05, 0.01))
    assert (cfg.momentum, cfg.weight_decay, cfg.optimizer, cfg.augment, cfg.preprocess) == (
        0.9, 1e-3, "sgd", "none", "gcn-zca")
    assert (cfg.dropout, cfg.final_relu, cfg.bn, cfg.batch_size, cfg.init) == (True, True, False, 256, "caffe-xavier")
    assert {k: getattr(cfg, k) for k in ablations.BASELINE} == ablations.BASELINE
    assert len(expand(cfg)) == len(expand(PRESETS["smoke"])) == 48  # the smoke grid has the paper's shape


def test_smoke_preset_trains_in_fp32_and_prepares_its_own_data_folder():
    """The smoke preset prepares its 10 images per class into a folder of its own, so that a smoke grid never
    replaces the full prepared copy the paper preset reads from data/ (a data_dir shared with the paper preset
    passed the config and CLI tests before), and trains in fp32 on every machine: one run key whatever the CPU."""
    smoke, paper = PRESETS["smoke"], PRESETS["paper"]
    assert smoke.data_dir != paper.data_dir and (smoke.subset_per_class, paper.subset_per_class) == (10, None)
    assert (smoke.precision, smoke.eval_precision, smoke.epochs) == ("no", "no", 2)


def test_options_replace_the_presets_fields():
    cfg = parse_args(["--preset", "smoke", "--lrs", "0.1", "0.05", "--no-dropout", "--lr-drops", "--epochs", "3",
                      "--subset-per-class", "none", "--ablations", "all"])
    assert cfg.preset == "smoke" and cfg.lrs == (0.1, 0.05) and cfg.dropout is False and cfg.epochs == 3
    assert cfg.lr_drops == () and cfg.subset_per_class is None and cfg.ablations == tuple(ablations.ABLATIONS)
    assert cfg.batch_size == PRESETS["smoke"].batch_size


def test_run_key_ignores_where_and_how_but_not_what():
    cfg = parse_args(["--models", "allcnn-c", "--lrs", "0.05"])
    (run,) = expand(cfg, "sha")
    same = dataclasses.replace(cfg, out="/elsewhere", progress=False, data_dir="/d", mode="ddp", log_with="x",
                               checkpoint_minutes=0, claim_lease_minutes=1, num_workers=3, channels_last=False,
                               source="/s.tar.gz", backend="torch")
    assert expand(same, "sha")[0].key("sha") == run.key("sha")
    for how in ({"compile": True}, {"cuda_graphs": True}, {"deterministic": True}, {"fuse_lrs": True},
                {"diagnose": False}, {"save_weights": False}):  # the session's (bench.schema.SESSION_FLAGS) or after
        assert expand(dataclasses.replace(cfg, **how), "sha")[0].key("sha") == run.key("sha"), how
    for change in ({"epochs": 349}, {"eval_every": 5}, {"eval_last": 3}, {"precision": "no"}, {"batch_size": 128},
                   {"subset_per_class": 10}, {"preset": "smoke"}, {"lr_drops": (100, 150)}, {"momentum": 0.5},
                   {"weight_decay": 5e-4}, {"optimizer": "adam"}, {"dropout": False}, {"final_relu": False},
                   {"bn": True}, {"init": "kaiming"}, {"preprocess": "meanstd"}, {"augment": "flip-translate"},
                   {"train_split": "train45k"}, {"eval_precision": "bf16"}):
        assert expand(dataclasses.replace(cfg, **change), "sha")[0].key("sha") != run.key("sha"), change
    assert run.key("other data") != run.key("sha")


def test_run_key_tells_apart_the_runs_of_one_grid():
    """Each model, LR and seed of a grid is a run of its own key: a field of them left out of the key (NOT_IN_KEY)
    made expand() keep one run of several (seeds 1 and 2 of each LR never trained, their rerun skipped as recorded)."""
    cfg = parse_args(["--models", "allcnn-c", "strided-a", "--lrs", "0.05", "0.1", "--seeds", "0", "1"])
    runs = expand(cfg, "sha")
    assert sorted((r.model, r.lr, r.seed) for r in runs) == sorted(
        (m, lr, s) for m in ("allcnn-c", "strided-a") for lr in (0.05, 0.1) for s in (0, 1))
    assert len({r.key("sha") for r in runs}) == 8


def test_ablations_add_their_arms_once_and_arm_of_finds_them():
    cfg = parse_args(["--models", "allcnn-c", "--lrs", "0.05", "--ablations", "all"])
    runs = expand(cfg)
    assert len({r.key() for r in runs}) == len(runs)
    for name, ablation in ablations.ABLATIONS.items():
        for arm in ablation.arms:
            members = [r for r in runs if ablations.arm_of(r.config(), name) == arm]
            lrs = ablation.arms[arm].get("lrs", (0.05,))
            assert len(members) == len(ablation.models) * len(lrs), (name, arm)
    adam = [r for r in runs if r.cfg.optimizer == "adam"]
    assert sorted(r.lr for r in adam) == sorted(ablations.ABLATIONS["optimizer"].arms["Adam"]["lrs"])
    kaiming = [r for r in runs if r.cfg.init == "kaiming"]  # arms on fields beyond the first six ablations'
    assert sorted(r.model for r in kaiming) == ["allcnn-c", "convpool-c"]
    assert [r.cfg.batch_size for r in runs if ablations.arm_of(r.config(), "batch-size") == "128"] == [128]
    smoke = expand(parse_args(["--preset", "smoke", "--models", "allcnn-c", "--lrs", "0.05",
                               "--ablations", "batch-size"]))
    assert [ablations.arm_of(r.config(), "batch-size") for r in smoke] == ["256 (Caffe port)", "128"]


def test_an_arms_changes_name_only_fields_of_its_run_key():
    """bench.plan's rows and run_all's progress lines tell an arm's runs apart by config.arm_changes. Under
    --cuda-graphs --fuse-lrs the Adam and BN arms train unfused (Adam also eagerly): switches outside the run key,
    which named among the changes ("optimizer=adam, cuda_graphs=False, fuse_lrs=False") passed tests/test_plan.py."""
    cfg = parse_args(["--models", "allcnn-c", "--lrs", "0.05", "--ablations", "optimizer,bn-dropout", "--cuda-graphs",
                      "--fuse-lrs"])
    assert [config.arm_changes(r.cfg, cfg) for r in expand(cfg) if r.lr in (0.05, 3e-3)] == [
        "", "optimizer=adam", "bn=True", "dropout=False", "bn=True, dropout=False"]


@pytest.mark.parametrize("arms, error", [
    ({"base": {}, "typo": {"inti": "kaiming"}}, "arm 'typo': inti cannot be varied by an arm"),
    ({"base": {}, "where": {"backend": "torch"}}, "arm 'where': backend cannot be varied"),  # not in the run key
    ({"base": {}, "grid": {"seed": 1}}, "arm 'grid': seed cannot be varied"),
    ({"base": {}, "short": {"epochs": 100}}, "arm 'short': epochs cannot be varied"),  # a report takes one length
    ({"base": {}, "few": {"subset_per_class": 10}}, "arm 'few': subset_per_class cannot"),  # data prepared once
    ({"base": {"bn": True}}, "its first arm is the baseline and must override nothing"),
    # values of another type: they trained the run and then failed its record's check, or crashed torch's SGD
    ({"base": {}, "off": {"dropout": 0}}, "arm 'off': dropout must be True or False, got 0"),
    ({"base": {}, "wd": {"weight_decay": "5e-4"}}, "arm 'wd': weight_decay must be a number, got '5e-4'"),
    ({"base": {}, "one": {"lrs": 0.1}}, r"arm 'one': lrs must be a non-empty tuple of learning rates > 0, got 0.1"),
    ({"base": {}, "neg": {"lrs": (-0.01,)}}, r"arm 'neg': lrs must be a non-empty tuple of learning rates > 0"),
    ({"base": {}, "none": {"lrs": ()}}, r"arm 'none': lrs must be a non-empty tuple of learning rates > 0"),
    ({"base": {}, "list": {"lr_drops": [100]}}, r"arm 'list': lr_drops must be a tuple, each item an int, got \[100\]"),
])
def test_an_arm_on_a_field_that_cannot_vary_is_refused(arms, error):
    with pytest.raises(ValueError, match=f"ablation 'mine', {error}" if "arm '" in error else error):
        ablations.check("mine", ablations.Ablation("Mine", arms))
    ablations.check("mine", ablations.Ablation("Mine", {"base": {}, "wd": {"weight_decay": 5e-4, "lrs": (0.1,)}}))


@pytest.mark.parametrize("arm, error", [
    ({"momentum": 1.5}, r"--momentum must be in \[0, 1\), got 1.5"),
    ({"lr_drops": (100,)}, r"--lr-drops must be increasing epochs in 1..1, got \[100\]"),  # beyond the smoke grid
    ({"precision": "fp8"}, r"--precision must be one of no, bf16, fp16, got 'fp8'"),  # was "ablation mine needs
    ({"precision": "bf16"}, r"--precision bf16 needs the grid at --precision bf16"),  # --precision fp8", no arm
])
def test_an_arms_value_that_its_field_does_not_take_names_the_arm(monkeypatch, arm, error):
    """The same check as the option's, with the ablation and arm in front: the user never typed --momentum."""
    monkeypatch.setitem(ablations.ABLATIONS, "mine", ablations.Ablation("Mine", {"base": {}, "odd": arm}))
    with pytest.raises(ValueError, match=f"^ablation 'mine', arm 'odd': {error}"):
        expand(parse_args(["--preset", "smoke", "--models", "allcnn-c", "--ablations", "mine"]), "sha")


def test_an_arm_may_name_fp32_by_its_label(monkeypatch):
    """`--precision` takes fp32 for "no"; an arm {"precision": "fp32"} was refused with "ablation NAME needs
    --precision fp32", which the same refusal followed. It is the precision ablation's fp32 arm."""
    mine = ablations.Ablation("Mine", {"base": {}, "fp32": {"precision": "fp32"}})
    monkeypatch.setitem(ablations.ABLATIONS, "mine", mine)
    runs = expand(parse_args(["--models", "allcnn-c", "--lrs", "0.1", "--ablations", "mine,precision"]), "sha")
    assert [(r.cfg.precision, r.cfg.eval_precision) for r in runs] == [("bf16", "no"), ("no", "no")]
    runs = expand(parse_args(["--models", "allcnn-c", "--lrs", "0.1", "--ablations", "precision", "--eval-precision",
                              "bf16"]), "sha")  # the fp32 arm is fp32 throughout, whatever the grid evaluates in
    assert [(r.cfg.precision, r.cfg.eval_precision) for r in runs] == [("bf16", "bf16"), ("no", "no")]


@pytest.mark.parametrize("option, value, shown", [("--weight-decay", "nan", "nan"), ("--weight-decay", "inf", "inf"),
                                                  ("--weight-decay", "-1", "-1.0"),
                                                  ("--batch-size", str(10 ** 19), str(10 ** 19)),
                                                  ("--epochs", str(10 ** 19), str(10 ** 19))])
def test_a_number_the_record_refuses_is_refused_before_training(option, value, shown):
    """What bench.schema.RANGES refuses in a record: accepted here, it trained the whole run, and then the record
    check raised (a traceback, no record, the same on every rerun). One line now (run_all: exit 2)."""
    with pytest.raises(ValueError) as e:
        parse_args(["--preset", "smoke", option, value])
    assert str(e.value).startswith(f"{option} must be finite and in [") and str(e.value).endswith(f", got {shown}")
    assert "\n" not in str(e.value)


def test_lr_drops_in_another_order_or_twice_are_refused():
    """--lr-drops 300 250 200 trains as 200 250 300 (bench.engine.lr_at counts the drops reached) but hashed to
    another run key: the same run trained and recorded twice; 200 200 300 (a 100x drop at once) is no schedule of
    the paper's form. With the check dropped both passed the config, CLI and run_all bad-input tests."""
    for drops in (["300", "250", "200"], ["200", "200", "300"]):
        with pytest.raises(ValueError, match=r"^--lr-drops must be increasing epochs in 1\.\.349, got "):
            parse_args(["--lr-drops", *drops])
    assert engine.lr_at(260, 1.0, (300, 250, 200)) == engine.lr_at(260, 1.0, (200, 250, 300))


@pytest.mark.parametrize("option, value, error", [
    ("--eval-every", "0", "--eval-every must be >= 1, got 0"),  # else a ZeroDivisionError after the first epoch
    ("--claim-lease-minutes", "-1", "--claim-lease-minutes must be >= 0, got -1.0"),  # every live claim stale
    ("--claim-lease-minutes", "nan", "--claim-lease-minutes must be >= 0, got nan"),  # no dead claim ever stale
    ("--momentum", "1", r"--momentum must be in \[0, 1\), got 1.0"),
    ("--subset-per-class", "0", "--subset-per-class must be >= 1, got 0"),
])
def test_an_option_out_of_its_range_is_one_line_that_names_it(option, value, error):
    """Refused before anything is prepared or trained; with its check dropped or loosened (a mutation spot-check)
    each passed the config, CLI and run_all bad-input tests: --eval-every 0 then stopped the first run with a
    traceback once its first epoch ended, and a negative or NaN claim lease let another host take over a live run
    (trained twice) or never take over a dead one's."""
    with pytest.raises(ValueError, match=f"^{error}$"):
        parse_args(["--preset", "smoke", option, value])


def test_fp32_is_no_by_another_name_on_the_command_line():
    """README: `--precision no` (alias fp32), as in bench/throughput.py. Without bench.cli.precision_arg run_all
    refused fp32, and the alias must name the same runs as `no` (one run key)."""
    fp32 = parse_args(["--models", "allcnn-c", "--lrs", "0.05", "--precision", "fp32", "--eval-precision", "fp32"])
    no = parse_args(["--models", "allcnn-c", "--lrs", "0.05", "--precision", "no"])
    assert (fp32.precision, fp32.eval_precision) == ("no", "no")
    assert expand(fp32, "sha")[0].key("sha") == expand(no, "sha")[0].key("sha")


def test_an_int_where_a_float_is_meant_names_the_same_run(monkeypatch):
    """lrs=(1,) or weight_decay=0 through the Python API (dataclasses.replace, as bench/config.py's docstring shows)
    or in an ablation arm (ablations.check takes an int for a number) trains as the command line's 1.0 and 0.0, but
    hashed to another run key (JSON writes 1 and 1.0 apart): the same run trained and recorded twice."""
    argv = ["--models", "allcnn-c", "--lrs", "1", "--weight-decay", "0", "--momentum", "0"]
    (cli,) = expand(parse_args(argv), "sha")
    (api,) = expand(dataclasses.replace(PRESETS["paper"], models=("allcnn-c",), lrs=(1,), weight_decay=0, momentum=0),
                    "sha")
    assert api.key("sha") == cli.key("sha") and api.config("sha") == cli.config("sha")
    monkeypatch.setitem(ablations.ABLATIONS, "mine", ablations.Ablation("Mine", {"base": {}, "same": {
        "weight_decay": 0, "momentum": 0, "lrs": (1,)}}))
    assert [r.key("sha") for r in expand(parse_args([*argv, "--ablations", "mine"]), "sha")] == [cli.key("sha")]


def test_the_committed_campaign_runs_keep_their_run_keys():
    """The GPU campaign's two records and its unfinished run's checkpoint (reports/measured/campaign) were trained
    with the paper preset's defaults; the next campaign skips them, and resumes the checkpoint, only while today's
    code gives those options the same run keys. A field moved into the key or out of it (--deterministic,
    --eval-every) or a paper default changed (--eval-every 5) passed the key tests here (only the slow two-process
    run_all tests pin the key's fields): each of those runs would train again on a lent GPU, the ledger hold it
    twice."""
    runs = Path(__file__).resolve().parents[1] / "reports/measured/campaign/runs"
    sha = json.loads((runs / "489234371f2401e9.json").read_text())["config"]["data_sha256"]
    for lr, key in ((0.01, "489234371f2401e9"), (0.05, "f827e2053e7b9174"), (0.1, "86ce826000eb7539")):
        (run,) = expand(parse_args(["--models", "allcnn-c", "--lrs", str(lr), "--seeds", "0"]))
        assert run.key(sha) == key, lr


def test_lr_schedule_drops_tenfold_at_each_drop_epoch():
    drops = (200, 250, 300)
    assert [engine.lr_at(e, 0.1, drops) for e in (0, 199)] == [0.1, 0.1]
    assert engine.lr_at(200, 0.1, drops) == pytest.approx(0.01)
    assert engine.lr_at(250, 0.1, drops) == pytest.approx(0.001)
    assert engine.lr_at(349, 0.1, drops) == pytest.approx(1e-4)


def test_checkpoint_round_trip_restores_model_optimizer_rng_and_epoch(tmp_path):
    import torch
    from accelerate.utils import set_seed

    from tests.test_untrusted import history

    class Acc:  # the two things save/load use from an Accelerator
        scaler, num_processes, is_main_process = None, 1, True

    def build():
        set_seed(0)
        net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))
        return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    net, opt = build()
    for _ in range(2):
        opt.zero_grad()
        net(torch.ones(5, 4)).sum().backward()
        opt.step()
    state = engine.EpochState(step=3, loss_sum=torch.tensor(1.5), correct=torch.tensor(4), seen=torch.tensor(9))
    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint(path, Acc(), net, opt, epoch=7, epoch_state=state.to_dict(),
                               history=history(7), extra={"x": 1}, distributed=False)
    expected = net(torch.ones(5, 4))  # consumes dropout randomness after the save

    net2, opt2 = build()
    blob = checkpoint.load_checkpoint(path, Acc(), net2, opt2, rank=0, world=1, epoch_state=engine.EpochState)
    assert blob["epoch"] == 7 and blob["history"] == history(7) and blob["epoch_state"].step == 3
    assert torch.equal(net2(torch.ones(5, 4)), expected)  # same weights and the same dropout mask
    momentum = [o.state_dict()["state"][1]["momentum_buffer"] for o in (opt, opt2)]
    assert torch.equal(*momentum)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_counts_each_test_image_once(world, smoke_data_dir, run_worker):
    """100 test images over 1, 2, 3 gloo ranks (3 does not divide 100): the summed count is exactly 100, and
    the number correct and the summed test loss equal the single-process ones."""
    p = run_worker([__file__, "eval-count", str(smoke_data_dir)], world, timeout=180)
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["world"] == world and result["seen"] == 100
    assert result["correct"] == EXPECTED_CORRECT.setdefault("value", result["correct"])
    assert 0 <= result["correct"] <= 100
    assert result["loss_sum"] == pytest.approx(EXPECTED_CORRECT.setdefault("loss_sum", result["loss_sum"]), rel=1e-6)
    assert 100 * 2.0 < result["loss_sum"] < 100 * 2.6  # an untrained net: about ln 10 = 2.30 an image


EXPECTED_CORRECT: dict = {}


def _eval_count_worker(data_dir: str) -> None:
    """Evaluate one fixed-seed Strided-CNN-A on the test split over however many ranks this was launched with."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    import allconv
    import loaders
    from loaders.preprocess import build_preprocess

    acc = Accelerator(mixed_precision="no")
    set_seed(0)
    net = allconv.build("strided-a").to(acc.device)
    distributed = acc.num_processes > 1
    loader = loaders.make("test", 32, data_dir=data_dir, backend="tensor", device=acc.device, distributed=distributed)
    pre = build_preprocess("gcn-zca", data_dir).to(acc.device)
    correct, seen, _, loss_sum = engine.evaluate(net, loader, pre, acc, distributed=distributed)
    if acc.is_main_process:
        print(json.dumps({"world": acc.num_processes, "seen": seen, "correct": correct, "loss_sum": loss_sum}))
    acc.wait_for_everyone()  # a rank that exits while the gloo group is alive can abort ("terminate called ...")
    acc.end_training()


if __name__ == "__main__":
    if sys.argv[1:2] == ["eval-count"]:
        _eval_count_worker(sys.argv[2])


def test_a_training_step_is_caffes_sgd_on_every_parameter(smoke_data_dir, fresh_accelerator):
    """The update of the Caffe port that reached 90.25% (ALL_CNN_C_solver.prototxt: SGD, momentum 0.9, weight decay
    1e-3 with Caffe's default decay_mult 1, so biases decay too; SoftmaxWithLoss, a batch mean): per parameter
    v <- 0.9 v + lr (g + 1e-3 w), w <- w - v. Three steps at a constant LR through the code the runs use (build_net,
    set_lr, train_step, GCN+ZCA) on 32 real images, fp32, without dropout, against that rule written out with
    autograd. A bias left out of the decay, Nesterov, dampening or a summed loss fails; so does a step that returns
    the batch's mean loss instead of its sum (each epoch's recorded loss ~1/batch of the truth). (At an LR drop
    Caffe's v still holds the old LR's steps, PyTorch's the gradients: the two differ for the ~10 steps after each
    drop.)"""
    import torch
    import torch.nn.functional as F

    import loaders
    from bench import process, runs
    from loaders.preprocess import build_preprocess

    acc = process.make_accelerator("no", cpu=True)
    cfg = dataclasses.replace(PRESETS["paper"], precision="no", dropout=False, channels_last=False)
    torch.manual_seed(0)
    net, opt = runs.build_net(config.Run("strided-a", 0.05, 0, cfg), acc.device)
    opt = acc.prepare_optimizer(opt)
    engine.set_lr(opt, 0.02)
    images, labels = (torch.from_numpy(a[:32]) for a in loaders.load_arrays(smoke_data_dir, "train"))
    preprocess = build_preprocess("gcn-zca", smoke_data_dir)
    images = images.permute(0, 3, 1, 2).contiguous()  # the loaders' N x 3 x 32 x 32 uint8
    w = [p.detach().clone() for p in net.parameters()]
    v = [torch.zeros_like(p) for p in w]
    assert len(w) == 2 * 5 and len(opt.param_groups) == 1  # Strided-CNN-A's 5 convs, weights and biases
    for _ in range(3):
        params = [p.clone().requires_grad_() for p in w]
        logits = torch.func.functional_call(net, dict(zip((n for n, _ in net.named_parameters()), params)),
                                            (preprocess(images),))
        loss = F.cross_entropy(logits, labels.long())
        grads = torch.autograd.grad(loss, params)
        v = [0.9 * vi + 0.02 * (g + 1e-3 * wi) for vi, g, wi in zip(v, grads, w)]
        w = [wi - vi for wi, vi in zip(w, v)]
        loss_sum, correct = engine.train_step(net, opt, images, labels.long(), preprocess, acc,
                                              engine.autocast_for("no", acc))
        # what the epoch's loss and training accuracy are summed from: the batch's, before its update
        assert loss_sum.item() == pytest.approx(32 * loss.item(), rel=1e-5)
        assert correct.item() == (logits.argmax(1) == labels).sum().item()
    for (name, p), expected in zip(net.named_parameters(), w):
        assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-6 * expected.abs().max().item()), name


def test_the_adam_arm_decays_as_l2_in_the_gradient():
    """The optimizer ablation's Adam arm: "Adam with the same L2 decay" (engine.make_optimizer), i.e. 1e-3 w added to
    the gradient before Adam's moments. With a zero loss gradient its first step is then lr * sign(w) (Adam
    normalises the decay term); decoupled decay (AdamW) would move w by lr * 1e-3 * w, no decay not at all. Either
    passed every test (no test built the Adam arm's optimizer)."""
    import torch

    w = torch.nn.Parameter(torch.tensor([2.0, -3.0, 0.5]))
    opt = engine.make_optimizer("adam", [w], 0.01, 0.9, 1e-3, torch.device("cpu"))
    w.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([1.99, -2.99, 0.49]), rtol=0, atol=1e-6)


def test_each_step_trains_at_the_schedules_lr_in_train_mode_and_the_record_counts_what_evaluation_saw(
        smoke_data_dir, jpeg_tarball, tmp_path, monkeypatch, fresh_accelerator):
    """run_all end to end on 100 real images, 3 epochs of 2 steps, LR 0.05 dropped at epochs 1 and 2, evaluated after
    every epoch: spies on engine's train and eval steps see the optimizer at 0.05, 0.005, 0.0005 with the network
    in train mode (dropout on, also after an evaluation put it in eval mode), and evaluation in eval mode; each
    epoch's recorded test error is 100 - the number evaluation counted correct, and the record's error is the last
    epoch's. (The history's `lr` is computed from the schedule, not read from the optimizer: it cannot tell.)"""
    from bench import results, run_all

    steps, correct, losses = [], [], []
    train_step, eval_step = engine.train_step, engine.eval_step

    def train_spy(model, optimizer, *a, **kw):
        steps.append((round(optimizer.param_groups[0]["lr"], 10), model.training))
        return train_step(model, optimizer, *a, **kw)

    def eval_spy(model, *a, **kw):
        assert not model.training
        correct.append(int((n := eval_step(model, *a, **kw))[0]))
        losses.append(float(n[1]))
        return n

    monkeypatch.setattr(engine, "train_step", train_spy)
    monkeypatch.setattr(engine, "eval_step", eval_spy)
    monkeypatch.setattr(run_all, "measure_rate", lambda *a: 1.0)  # the ETA's steps, on a net of their own
    out = tmp_path / "out"
    assert run_all.main(["--preset", "smoke", "--models", "strided-a", "--lrs", "0.05", "--epochs", "3",
                         "--lr-drops", "1", "2", "--batch-size", "50", "--source", str(jpeg_tarball), "--data-dir",
                         str(smoke_data_dir), "--subset-per-class", "10", "--out", str(out), "--backend", "tensor",
                         "--no-progress"]) == 0
    (record,) = results.read_records(out)
    assert record["status"] == "completed", record["error"]  # an assertion in a spy fails the run, not main
    assert steps == [(0.05, True)] * 2 + [(0.005, True)] * 2 + [(0.0005, True)] * 2
    per_epoch = [sum(correct[i:i + 2]) for i in range(0, len(correct), 2)]  # 100 test images, batches of 50
    assert len(per_epoch) == 3 and [h["test_error_pct"] for h in record["history"]] == pytest.approx(
        [100 - c for c in per_epoch])
    assert [h["test_loss"] for h in record["history"]] == pytest.approx(  # the mean over the 100: summed / 100
        [sum(losses[i:i + 2]) / 100 for i in range(0, len(losses), 2)])
    assert record["test_error_pct"] == record["history"][-1]["test_error_pct"]


def test_a_runs_error_is_its_last_epochs_and_its_best_epoch_is_named(tmp_path):
    """runs.summary: `test_error_pct` is the final epoch's (Table 3's protocol), `best_test_error_pct` the lowest
    over the evaluated epochs and `best_epoch` where it was; epochs not evaluated (None) are skipped."""
    import torch
    from accelerate.utils import AutocastKwargs

    from bench import runs

    class Acc:
        device, mixed_precision = torch.device("cpu"), "no"

    state = run_state.RunState(tmp_path / "run.pt", history=[
        {"epoch": e, "loss": 1.0, "train_acc_pct": 50.0, "test_error_pct": t, "val_error_pct": v, "lr": 0.1,
         "seconds": 1.0} for e, t, v in ((1, 40.0, 41.0), (2, None, None), (3, 20.0, 22.0), (4, 30.0, 33.0))])
    off = AutocastKwargs(enabled=False)
    out = runs.summary(state, "completed", None, torch.nn.Linear(2, 3), Acc(), off, off)
    assert (out["test_error_pct"], out["best_test_error_pct"], out["best_epoch"]) == (30.0, 20.0, 3)
    assert (out["val_error_pct"], out["epochs_completed"], out["params"]) == (33.0, 4, 9)


def test_an_epochs_entry_holds_its_means_and_only_steady_images_make_the_images_per_s(tmp_path):
    """RunState.end_epoch: 0-based epoch 0 is the history's epoch 1, its loss and accuracy the means over the images it
    saw (engine.EpochState holds sums), its LR the one given; the timing sums behind the record's train_images_per_s
    take steady epochs only (not the first: JIT, cuDNN autotuning, caches) and their steady images (after any
    warm-up steps), not every image seen. An evaluation fills the entry's error and mean loss and adds its time to
    the epoch's seconds (the ETA's) and to the evaluation throughput."""
    import torch

    state = run_state.RunState(tmp_path / "run.pt")

    def sums(steady_images: int) -> engine.EpochState:  # 100 images seen, 30 right, 1.5 of 2 s steady
        return engine.EpochState(step=4, loss_sum=torch.tensor(230.0), correct=torch.tensor(30),
                                 seen=torch.tensor(100), train_seconds=2.0, steady_seconds=1.5,
                                 steady_images=steady_images)

    first = state.end_epoch(sums(100), 0, 0.05, None, distributed=False, steady=False)
    assert first == {"epoch": 1, "loss": pytest.approx(2.3), "train_acc_pct": pytest.approx(30.0),
                     "test_error_pct": None, "val_error_pct": None, "test_loss": None, "val_loss": None, "lr": 0.05,
                     "seconds": 2.0}
    assert (state.timings["steady_img"], state.timings["steady_s"]) == (0, 0.0)
    assert state.end_epoch(sums(80), 1, 0.005, None, distributed=False, steady=True)["epoch"] == 2
    assert (state.timings["steady_img"], state.timings["steady_s"]) == (80, 1.5)
    assert checkpoint.rates(state.timings)["train_images_per_s"] == pytest.approx(80 / 1.5)
    state.add_evaluation(first, "test", 60, 100, 100, 0.5, 150.0)  # 60 of 100 right in 0.5 s, summed loss 150
    assert (first["test_error_pct"], first["test_loss"], first["seconds"]) == (pytest.approx(40.0), 1.5, 2.5)
    assert (state.timings["eval_img"], state.timings["eval_s"]) == (100, 0.5)  # the record's eval_images_per_s


def test_a_run_trains_on_its_split_seed_augmentation_and_batch_share_and_is_judged_on_its_val_split(smoke_data_dir):
    """runs.train_loader and runs.eval_loaders through a real loaders.Cache, for a grid with the augmentation and
    LR-selection arms: each run's training batches come from its own training split (the lr-selection arm's
    train45k, not all 50,000 images, val5k's included), shuffled by its own seed, flipped and shifted only in the
    augmentation arm (Table 4), each process of a DDP run taking its share of the global batch; the lr-selection
    arm is evaluated on val5k as well as test. The Cache keeps one whitening per fit split too (a train45k run's
    ZCA is fitted on train45k). run_all trains no train45k run in the tests, and one seed per LR."""
    import loaders
    from bench import runs

    cfg = dataclasses.replace(PRESETS["smoke"], models=("strided-a",), lrs=(0.05,), seeds=(3, 4),
                              ablations=("augmentation", "lr-selection"))
    cache = loaders.Cache(smoke_data_dir, backend="tensor", device="cpu", distributed=False, batch_size=64)
    grid = expand(cfg)
    assert {(r.seed, r.cfg.augment, r.cfg.train_split) for r in grid} == {
        (seed, *arm) for seed in (3, 4) for arm in (("none", "train"), ("flip-translate", "train"),
                                                     ("none", "train45k"))}
    for run in grid:
        c = run.cfg
        loader = runs.train_loader(cache, run, processes=2)
        assert (loader.split, loader.seed, loader.augment) == (c.train_split, run.seed, c.augment)
        assert loader.batch_size == 32  # smoke's 64 over 2 processes
        judged = {name: ev.split for name, (ev, _) in runs.eval_loaders(cache, c, {"test": 100, "val5k": 10}).items()}
        assert judged == ({"test": "test", "val": "val5k"} if c.train_split == "train45k" else {"test": "test"})
    for split in ("train45k", "train"):
        assert cache.preprocess("gcn-zca", split).fitted_on["fit_split"] == split


def test_a_records_num_train_counts_its_own_training_split(smoke_data_dir):
    """runs.make_record: the record's data.num_train is the image count of the split the run trained on (the
    lr-selection arm's train45k: 90 of the sample's 100), as its cost and the reports read it. run_all trains no
    train45k run in the tests, where it is always the training split's count. Its device_count is the devices the
    run trained on: one in grid mode, whatever the process count (a two-process test alone checked it)."""
    from bench import runs
    from loaders.manifest import load_manifest

    # with the digests process.prepare_data adds
    manifest = dict(load_manifest(smoke_data_dir), manifest_sha256="0" * 64, arrays_sha256="1" * 64)
    env = {"device_name": "CPU: test", "versions": {}, "git_commit": None, "git_dirty": None, "code_sha256": None}
    cfg = dataclasses.replace(PRESETS["smoke"], models=("strided-a",), lrs=(0.05,), ablations=("lr-selection",))
    counts = {run.cfg.train_split: runs.make_record(run, "k", "0" * 64, manifest, env, "grid", 1, runs.now(),
                                                    {})["data"]["num_train"] for run in expand(cfg)}
    assert counts == {"train": 100, "train45k": 90}
    on_two = {mode: runs.make_record(expand(cfg)[0], "k", "0" * 64, manifest, env, mode, 2, runs.now(), {})
              for mode in ("grid", "ddp")}  # 2 processes: in grid mode each trains runs of its own on one device
    assert {mode: (r["device_count"], r["world_size"]) for mode, r in on_two.items()} == {"grid": (1, 2),
                                                                                          "ddp": (2, 2)}


def test_a_runs_recorded_precision_is_the_one_it_trained_and_evaluated_in(tmp_path):
    """runs.summary under a bf16 Accelerator (one per process, at the grid's precision): the precision ablation's fp32
    arm trains with autocast off and its record says "no", not the process's bf16 (the reports' Precision column
    reads it); a bf16 run says bf16, and its evaluation precision is its own."""
    import torch
    from accelerate.utils import AutocastKwargs

    from bench import runs

    class Acc:
        device, mixed_precision = torch.device("cpu"), "bf16"

    state, net = run_state.RunState(tmp_path / "run.pt"), torch.nn.Linear(2, 3)
    got = {}
    for train, evaluate in ((False, False), (True, False), (True, True)):
        out = runs.summary(state, "completed", None, net, Acc(), AutocastKwargs(enabled=train),
                           AutocastKwargs(enabled=evaluate))
        got[train, evaluate] = (out["precision"], out["eval_precision"])
    assert got == {(False, False): ("no", "no"), (True, False): ("bf16", "no"), (True, True): ("bf16", "bf16")}


def test_a_run_builds_the_network_and_optimizer_its_config_names():
    """runs.build_net: each network option of the run's config (the head, init and BN arms, --no-dropout) and its SGD
    settings (--momentum, --weight-decay) reach what trains, not the paper's defaults: the same modules and, from
    one seed, the same initial weights as allconv.build with those options, and an SGD at the run's values."""
    import torch

    import allconv
    from bench import runs

    cfg = dataclasses.replace(PRESETS["smoke"], init="kaiming", final_relu=False, bn=True, dropout=False,
                              momentum=0.5, weight_decay=5e-3)
    torch.manual_seed(0)
    net, optimizer = runs.build_net(config.Run("strided-a", 0.05, 0, cfg), torch.device("cpu"))
    torch.manual_seed(0)
    want = allconv.build("strided-a", 10, bn=True, dropout=False, final_relu=False, init="kaiming")
    assert str(net) == str(want)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), want.state_dict().values(), strict=True))
    assert {(g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups} == {(0.05, 0.5, 5e-3)}
