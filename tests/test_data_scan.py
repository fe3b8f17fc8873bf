"""The data scan: one tiny dirty dataset per data diagnosis (its code ranks first), and clean ones."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import data_patients as dp
from patients import battery, blobs, codes, make_patient, mlp

BUDGET = 8.0
DATA_CODES = {"data-nonfinite", "target-out-of-range", "data-unnormalized", "data-constant-feature",
              "csv-index-column", "class-imbalance", "sample-loss-outlier", "sample-load-error"}


def scan(patient, budget=BUDGET, **kw):
    return battery(patient, probes=["data_scan"], budget=budget, **kw)


def serious_data_findings(report):
    return [f.code for f in report.findings if f.code in DATA_CODES and f.severity in ("warning", "critical")]


@pytest.mark.parametrize("patient", [
    pytest.param(lambda: make_patient(), id="blobs"),
    pytest.param(lambda: make_patient(data=dp.regression(), model=dp.reg_mlp, loss=nn.MSELoss()), id="regression"),
    pytest.param(lambda: make_patient(data=dp.images(), model=dp.bn_cnn, batch_size=8), id="batchnorm-cnn"),
])
def test_clean_data_has_no_data_finding(patient):
    report = scan(patient())
    assert report.probes["data_scan"].status == "ok"
    assert serious_data_findings(report) == []
    assert report.probes["data_scan"].metrics["samples_scanned"] == report.probes["data_scan"].metrics["samples_total"]


def test_batchnorm_model_is_scanned_in_eval_mode():
    report = scan(make_patient(data=dp.images(), model=dp.bn_cnn, batch_size=8))
    m = report.probes["data_scan"].metrics
    assert m["mode"].startswith("eval")
    assert m["inputs"]["layout"] == "channels" and m["inputs"]["features"] == 3
    assert m["loss"]["init"]["sampled"] == 128  # a per-sample loss for every image


def test_nan_rows_are_data_nonfinite_with_indices():
    report = scan(make_patient(data=dp.with_nan_rows(rows=(5, 77, 190))))
    top = report.findings[0]
    assert top.code == "data-nonfinite" and top.severity == "critical"
    assert top.evidence["sample_indices"] == [5, 77, 190]
    assert top.evidence["values_per_column"] == {"feature 3": 3}


def test_labels_out_of_range_rank_above_the_crash_and_the_cure_is_tried():
    report = scan(make_patient(data=dp.labels_off_by_one()), budget=12)
    assert codes(report)[0] == "target-out-of-range"
    assert "training-crashed" in codes(report)
    top = report.findings[0]
    assert top.evidence["values"] == {3: top.evidence["labels_out_of_range"]}
    assert top.evidence["valid_range"] == "[0, 3)"
    assert top.treatment is None or top.treatment["tried"].startswith("labels shifted")


@pytest.mark.parametrize("relabel, tried", [(lambda y: y - 1, "labels shifted by +1"),
                                            (lambda y: (y > 0).long() * 255, "labels mapped from 0/255 to 0/1")],
                         ids=["minus-one-based", "binary-0-255"])
def test_labels_off_in_the_other_common_ways_are_cured_by_remapping(relabel, tried):
    x, y = blobs(n=256, classes=3 if "+1" in tried else 2).tensors
    report = battery(make_patient(model=lambda: mlp(classes=3 if "+1" in tried else 2),
                                  data=TensorDataset(x, relabel(y))), budget=20)
    top = report.findings[0]
    assert top.code == "target-out-of-range" and top.status == "confirmed", (top.title, top.treatment)
    assert top.treatment["tried"].startswith(tried)
    crash = next(f for f in report.findings if f.code == "training-crashed")
    assert crash.explained_by == "target-out-of-range" and crash.status == "confirmed"


def test_a_0_255_mask_under_bce_with_logits_is_cured_by_mapping_it_to_0_1():
    """BCEWithLogitsLoss takes any float target without a crash: a target of 255 drives the loss below zero
    without bound; mapped to 0/1 the same training runs clean and fits."""
    x, y = blobs(n=256, classes=2).tensors
    report = battery(make_patient(model=lambda: mlp(classes=1), data=TensorDataset(x, 255.0 * y.float().unsqueeze(1)),
                                  loss=nn.BCEWithLogitsLoss()), budget=20)
    top = report.findings[0]
    assert top.code == "target-out-of-range" and top.status == "confirmed", (top.title, top.treatment)
    assert top.treatment["tried"].startswith("targets mapped from 0/255 to 0/1")
    assert min(top.treatment["before"]["tail_loss"], top.treatment["before"]["final_loss"]) < 0


def test_float_labels_are_a_wrong_dtype():
    report = scan(make_patient(data=dp.float_labels()))
    top = report.findings[0]
    assert top.code == "target-out-of-range"
    assert top.evidence["label_dtype"] == "float32" and top.evidence["expected_dtype"].startswith("int64")


def test_label_crash_alone_is_target_out_of_range():
    """Without the data scan, the crash message of the warm-up and overfit probes is enough."""
    report = battery(make_patient(data=dp.labels_off_by_one()), probes=["overfit"], budget=BUDGET, treatments=False)
    assert codes(report)[:2] == ["target-out-of-range", "training-crashed"]
    assert "out of bounds" in report.findings[0].evidence["message"]


def test_unnormalized_inputs():
    report = scan(make_patient(data=dp.scaled(factor=300.0)))
    top = report.findings[0]
    assert top.code == "data-unnormalized"
    assert top.evidence["largest_magnitude"] > 100


def test_constant_column():
    report = scan(make_patient(data=dp.constant_column(col=4, value=5.0)))
    assert codes(report)[0] == "data-constant-feature"
    assert report.findings[0].evidence["constant_columns"] == {"feature 4": 5.0}


def test_row_counter_feature_is_csv_index_column():
    report = scan(make_patient(data=dp.index_column(), model=lambda: mlp(features=10)))
    top = report.findings[0]
    assert top.code == "csv-index-column" and top.severity == "critical"
    assert top.evidence["columns"][0]["position"] == 0


def test_rare_class_is_class_imbalance():
    report = scan(make_patient(data=dp.imbalanced(counts=(300, 300, 12))))
    top = report.findings[0]
    assert top.code == "class-imbalance"
    assert top.evidence["ratio"] == pytest.approx(25.0)
    assert list(top.evidence["rare_classes"]) == [2]


def test_corrupted_targets_are_sample_loss_outliers():
    report = scan(make_patient(data=dp.regression(corrupt=(11, 123)), model=dp.reg_mlp, loss=nn.MSELoss()))
    top = report.findings[0]
    assert top.code == "sample-loss-outlier"
    assert sorted(top.evidence["sample_indices"][:2]) == [11, 123]


def test_corrupted_targets_are_confirmed_by_training_without_them_and_scoring_the_rest():
    """Two targets of 3000 among y ~ N(0, 3): with them MSE's gradient is theirs and the other samples are
    fitted worse; the cure scores the same other samples after training with and without them."""
    report = battery(make_patient(data=dp.regression(n=512, corrupt=(11, 123)), model=dp.reg_mlp, loss=nn.MSELoss()),
                     probes=["data_scan", "overfit"], budget=20)
    top = report.findings[0]
    assert top.code == "sample-loss-outlier" and top.status == "confirmed", top.treatment
    assert top.treatment["after"]["others_loss"] <= 0.5 * top.treatment["before"]["others_loss"]


def test_sample_that_raises_is_reported_and_the_scan_goes_on():
    report = scan(make_patient(data=dp.Flaky(dp.blobs(), broken=(7, 100))))
    top = report.findings[0]
    assert top.code == "sample-load-error"
    assert top.evidence["sample_indices"] == [7, 100]
    assert top.evidence["exception"] == "FileNotFoundError"
    assert report.probes["data_scan"].metrics["loss"]["init"]["sampled"] == 254


def test_a_large_set_is_scanned_as_a_stated_uniform_share():
    big = dp.blobs(n=400_000)
    report = scan(make_patient(data=big, model=lambda: mlp()), budget=3)
    m = report.probes["data_scan"].metrics
    assert 256 <= m["samples_scanned"] < m["samples_total"] == 400_000
    assert m["uniform"] and "uniformly drawn share" in m["sampling"]


def test_plots_are_written(out):
    report = scan(make_patient(data=dp.imbalanced()), out=out, budget=10)
    plots = report.probes["data_scan"].plots
    assert set(plots) == {"plots/data-sample-loss.png", "plots/data-classes.png", "plots/data-features.png"}
    assert all((out / p).stat().st_size > 1000 for p in plots)
    assert report.findings[0].plots == ["plots/data-classes.png"]


def test_the_scan_leaves_the_dataset_and_the_patient_as_they_were():
    data = dp.with_nan_rows()
    before = [t.clone() for t in data.tensors]
    patient = make_patient(data=data)
    state = {k: v.clone() for k, v in patient.new_model().state_dict().items()}
    scan(patient)
    assert all(torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0)) for a, b in zip(before, data.tensors))
    after = patient.new_model().state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def casting_step(model, batch, loss_fn, optimizer):
    """A user's own step that converts float labels itself: the set-up is healthy."""
    x, y = batch
    optimizer.zero_grad()
    loss = loss_fn(model(x), y.long())
    loss.backward()
    optimizer.step()
    return loss


def test_a_train_step_that_casts_the_labels_is_not_blamed_for_their_dtype():
    report = scan(make_patient(data=dp.float_labels(), train_step=casting_step))
    assert "target-out-of-range" not in codes(report)
    assert not [f for f in report.findings if f.severity == "critical"]


class TupleNet(nn.Module):
    """Returns (logits, a batch-level scalar): the loss picks the logits."""

    def __init__(self):
        super().__init__()
        self.m = mlp()

    def forward(self, x):
        out = self.m(x)
        return out, out.mean()


def tuple_loss(outputs, y):
    return nn.functional.cross_entropy(outputs[0], y)


class DictSamples(torch.utils.data.Dataset):
    def __init__(self):
        self.base = dp.blobs()

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"x": x, "y": y}


def dict_step(model, batch, loss_fn, optimizer):
    optimizer.zero_grad()
    loss = loss_fn(model(batch["x"]), batch["y"])
    loss.backward()
    optimizer.step()
    return loss


def test_odd_outputs_and_batches_are_scanned_without_false_findings():
    tuple_report = scan(make_patient(model=TupleNet, loss=tuple_loss))
    assert tuple_report.probes["data_scan"].metrics["loss"]["init"]["sampled"] == 256  # per-sample losses by a loop
    dict_report = scan(make_patient(data=DictSamples(), train_step=dict_step))
    assert dict_report.probes["data_scan"].metrics["inputs"]["features"] == 10  # inputs scanned, no loss
    assert serious_data_findings(tuple_report) == serious_data_findings(dict_report) == []


def test_a_constant_column_divided_by_its_zero_std_ranks_above_the_nan_it_makes():
    report = scan(make_patient(data=dp.standardised_with_a_constant_column(col=2)))
    assert codes(report)[:2] == ["data-constant-feature", "data-nonfinite"]
    assert report.findings[0].evidence["nonfinite_columns"] == {"feature 2": 256}


# --- per-sample magnitude, every sample's loss ---------------------------------------------------------
def scaled_row_whose_label_agrees(row=100, n=512, factor=1e6):
    """Blobs with one row scaled by ``factor`` and labelled with the fresh model's own prediction for it."""
    x, y = blobs(n=n).tensors
    x, y = x.clone(), y.clone()
    x[row] *= factor
    with torch.no_grad():
        y[row] = make_patient().new_model().eval()(x[row:row + 1]).argmax(1)[0]
    return TensorDataset(x, y)


def test_a_row_scaled_by_1e6_whose_label_agrees_is_named_by_its_magnitude():
    # lr 1e-9: the short training leaves the model as it was, so both models agree with the row's label
    report = scan(make_patient(data=scaled_row_whose_label_agrees(row=100), lr=1e-9))
    per_sample = report.probes["data_scan"].data["per_sample"]
    assert per_sample["loss_init"][100] < 1e-3 and per_sample["loss_trained"][100] < 1e-3  # its loss is no outlier
    found = [f for f in report.findings if f.code == "sample-loss-outlier"]
    assert found and found[0].severity == "critical"
    e = found[0].evidence
    assert e["sample_indices"] == [100]
    assert e["extreme_inputs"][0]["index"] == 100 and e["extreme_inputs"][0]["magnitude"] > 1e5
    assert e["extreme_inputs"][0]["loss_small"] and not e["worst_at_init"] and not e["worst_after_training"]
    assert "inputs" in found[0].title


def heavy_tailed(n=3000, seed=0) -> TensorDataset:
    """Healthy tabular data whose features are heavy-tailed for real: incomes (log-normal), returns (Student t,
    2 degrees of freedom), waiting times (exponential), counts (Poisson), a rare flag (2% ones), and Gaussians;
    the label depends on them."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, 4, generator=gen)
    income = torch.exp(1.5 * torch.randn(n, generator=gen))
    t2 = torch.randn(n, generator=gen) / torch.sqrt(torch.randn(n, 2, generator=gen).pow(2).sum(1) / 2)
    wait = torch.empty(n).exponential_(generator=gen)
    counts = torch.poisson(torch.full((n,), 3.0), generator=gen)
    flag = (torch.rand(n, generator=gen) < 0.02).float()
    x = torch.stack([income, t2, wait, counts, flag], 1)
    x = torch.cat([x, g], 1)
    y = ((g[:, 0] + 0.5 * torch.log(income) + flag) > 0.3).long() + (g[:, 1] > 1.0).long()
    return TensorDataset(x, y)


@pytest.mark.parametrize("n, seed", [(3000, 0), (3000, 1), (3000, 3), (50_000, 0)])
def test_healthy_heavy_tailed_features_get_no_warning(n, seed):
    """Their largest samples have losses and gradients 100x the median's (a warning before the jump was asked
    for), but the top of the ranking rises smoothly."""
    report = scan(make_patient(data=heavy_tailed(n=n, seed=seed), model=lambda: mlp(features=9)), budget=15)
    assert report.probes["data_scan"].status == "ok"
    assert serious_data_findings(report) == []
    m = report.probes["data_scan"].metrics
    assert m["magnitude"]["sampled"] == n and m["magnitude"]["max"] > 20 * m["magnitude"]["median"]  # tails there


def test_every_sample_gets_a_loss_and_a_gradient_norm_when_the_set_fits():
    report = scan(make_patient(data=blobs(n=5000)))
    m = report.probes["data_scan"].metrics
    assert m["whole_set"] and m["per_sample"]["losses"] == 5000
    per_sample = report.probes["data_scan"].data["per_sample"]
    assert all(bool(torch.isfinite(per_sample[c]).all()) for c in ("loss_init", "loss_trained"))
    # an MLP: every sample's gradient norm from one batched backward pass per chunk
    assert m["grad_norms"]["init"]["every_sample"] and m["per_sample"]["grad_norms"] == 5000
    assert bool((per_sample["grad_norm_init"] > 0).all())


def test_a_slow_step_time_does_not_shrink_a_scan_that_fits():
    """What is scanned depends on the time that is left, not on a speed estimate: a step time claimed 1000x
    too slow still gets the whole set when the time allows it."""
    from nandoctor.probes import ProbeContext
    from nandoctor.probes.data_scan import DataScan
    from nandoctor.records import Evidence
    ctx = ProbeContext(patient=make_patient(data=blobs(n=20_000)), seconds=20.0, step_time=5.0, evidence=Evidence())
    m = DataScan().run(ctx).metrics
    assert m["samples_scanned"] == 20_000 and m["sampling"] == "every sample" and m["per_sample"]["losses"] == 20_000


# --- sequences whose features are on the last dim ------------------------------------------------------
class WindowConv(nn.Module):
    """[N, T, F] windows of F sensor features, transposed for a Conv1d over time (a channels-last store)."""

    def __init__(self, features=6, out=3):
        super().__init__()
        self.conv = nn.Conv1d(features, 8, 3, padding=1)
        self.head = nn.Linear(8, out)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x.transpose(1, 2))).mean(2))


def sensor_windows(n=192, steps=10, features=6, dead=None, seed=0):
    """Windows whose class sets one feature's level; ``dead``: a feature that is 0/0 = NaN everywhere (a zero
    column divided by its zero max or std)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, steps, features, generator=g)
    x[:, :, 0] += y[:, None].float()
    if dead is not None:
        x[:, :, dead] = float("nan")
    return TensorDataset(x, y)


def test_a_sequence_whose_first_layer_reads_the_last_dim_is_scanned_per_feature():
    from nandoctor.probes.data_scan import input_width, layout_of
    x = sensor_windows()[:4][0]
    assert input_width(WindowConv()) == 6 and layout_of(x, WindowConv()) == "sequence"
    assert layout_of(x) == "channels" and layout_of(torch.zeros(4, 6, 6), WindowConv()) == "channels"
    report = scan(make_patient(data=sensor_windows(), model=WindowConv))
    assert report.probes["data_scan"].metrics["inputs"] == {**report.probes["data_scan"].metrics["inputs"],
                                                            "layout": "sequence", "features": 6}


def test_a_feature_nan_in_every_window_is_one_constant_column_and_zeroing_it_cures_the_run():
    """Read along dim 1 the dead feature would be one NaN in each of 10 "channels" (data-nonfinite); read along
    the last dim it is one column NaN everywhere: a constant feature divided by zero, cured by zeroing it."""
    report = battery(make_patient(data=sensor_windows(dead=4), model=WindowConv), probes=["data_scan", "overfit"],
                     budget=20)
    top = report.findings[0]
    assert top.code == "data-constant-feature" and top.evidence["nonfinite_columns"] == {"feature 4": 192 * 10}
    assert top.status == "confirmed", top.treatment


def test_outliers_a_robust_loss_tolerates_are_confirmed_by_the_batch_they_keep_from_training():
    """SmoothL1 bounds the corrupted targets' gradients, so the other samples are fitted as well with them as
    without (the stream cure fails); but two of them in the overfit probe's batch rule its loss, which does
    not move, and a batch of the data without them trains: that cure confirms them."""
    base = make_patient(data=dp.regression(n=192), model=dp.reg_mlp, loss=nn.SmoothL1Loss(),
                        optimizer=torch.optim.SGD, lr=1e-3, momentum=0.9, batch_size=16)
    held = base.fixed_indices()[:2]
    patient = base.variant("corrupted", train_data=dp.regression(n=192, corrupt=tuple(held) + (5, 77)))
    report = battery(patient, probes=["data_scan", "overfit"], budget=20)
    top = report.findings[0]
    assert top.code == "sample-loss-outlier" and top.status == "confirmed", top.treatment
    assert top.evidence["many_outliers"] is False and sorted(top.evidence["sample_indices"]) == sorted(held + [5, 77])
    assert "overfit run on a batch of the data without" in top.treatment["tried"]


def priced_regression(scale_inside: bool):
    """Standardised features, targets in the hundreds of thousands; with ``scale_inside`` the model undoes a
    standardisation of its own output (what a fitted target scaler does), which is healthy."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=gen)
    y = 3e5 + 7e4 * (x @ torch.randn(6, 1, generator=gen)) / 2.5

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(6, 1)

        def forward(self, inputs):
            return self.net(inputs) * 7e4 + 3e5

    return make_patient(model=Scaled if scale_inside else (lambda: mlp(6, 1)), data=TensorDataset(x, y),
                        loss=nn.MSELoss(), lr=1e-3)


def test_regression_targets_far_from_unit_scale_are_confirmed_by_standardising_them():
    report = battery(priced_regression(scale_inside=False), budget=30)
    top = report.findings[0]
    assert top.code == "data-unnormalized" and top.status == "confirmed", codes(report)
    assert top.evidence["targets"]["mean"] == pytest.approx(3e5, rel=0.05) and "targets standardised" in \
        top.treatment["tried"]


def test_large_targets_that_the_model_scales_itself_are_healthy():
    report = battery(priced_regression(scale_inside=True), budget=30)
    assert not [f.code for f in report.findings if f.severity == "critical"], codes(report)
