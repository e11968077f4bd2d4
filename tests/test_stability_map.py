"""The sweep's stability map puts each trial where the sweep varied it: at its rates, or at its searched keys when
every trial had the same rates."""

import itertools

import matplotlib.pyplot as plt
import pytest

from orchestrator.tune.stability_map import choose_axes, plot, to_csv


def trial(lr_g: float, lr_d: float, **params) -> dict:
    return {"trial": f"t{next(ids)}", "lr_g": lr_g, "lr_d": lr_d, "params": params, "status": "TERMINATED",
            "reason": "", "metric": 1.0}


ids = itertools.count()
GRID = frozenset({"train.r1_gamma", "train.condition_ramp"})


@pytest.fixture
def figures():
    made = []
    yield made
    for figure in made:
        plt.close(figure)


def test_trials_at_different_rates_are_placed_by_their_rates():
    x, y = choose_axes([trial(1e-4, 2e-4, **{"train.r1_gamma": 1.0}), trial(1e-4, 4e-4, **{"train.r1_gamma": 3.0})])
    assert (x.label, x.positions, x.log) == ("lr_G (optim.g.lr)", [1e-4, 1e-4], True)
    assert (y.label, y.positions, y.log) == ("lr_D (optim.d.lr)", [2e-4, 4e-4], True)


def test_trials_at_the_same_rates_are_placed_by_the_keys_that_vary(figures):
    rows = [trial(7e-4, 1.4e-3, **{"train.r1_gamma": g, "train.loss": "hinge", "train.condition_ramp": ramp})
            for g in (1.0, 3.0, 10.0) for ramp in ([1000, 2500], [500, 2000])]
    x, y = choose_axes(rows, GRID)
    assert (x.label, x.positions, x.log) == ("train.r1_gamma", [1.0, 1.0, 3.0, 3.0, 10.0, 10.0], True)
    assert (x.ticks, x.tick_labels) == ([1.0, 3.0, 10.0], ["1", "3", "10"])
    # categories in their sorted order, not the order the trials came in
    assert (y.label, y.positions, y.tick_labels) == ("train.condition_ramp", [1.0, 0.0] * 3,
                                                     ["[500, 2000]", "[1000, 2500]"])
    figures.append(figure := plot(rows, "fid", "min", "a grid", GRID))
    ax = figure.axes[0]
    assert [ax.get_xlabel(), ax.get_ylabel()] == ["train.r1_gamma", "train.condition_ramp"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "10"]
    assert list(ax.get_xticks(minor=True)) == []  # no log-scale ticks between them
    assert [t.get_text() for t in ax.get_yticklabels()] == ["[500, 2000]", "[1000, 2500]"]
    assert ax.collections[0].get_offsets().tolist() == [[px, py] for px, py in zip(x.positions, y.positions)]


def test_one_varying_key_is_plotted_against_nothing_and_a_narrow_range_on_a_linear_axis(figures):
    rows = [trial(7e-4, 1.4e-3, **{"train.r1_gamma": g}) for g in (1.0, 3.0)]
    x, y = choose_axes(rows, GRID)
    assert (x.positions, x.log, y.label, y.positions) == ([1.0, 3.0], False, "", [0.0, 0.0])
    figures.append(figure := plot(rows, "fid", "min", "one key"))
    assert figure.axes[0].collections[0].get_offsets().tolist() == [[1.0, 0.0], [3.0, 0.0]]


def test_without_a_varying_key_the_map_falls_back_to_the_rates(figures):
    for rows in ([trial(7e-4, 1.4e-3, **{"train.r1_gamma": 1.0})],
                 [trial(7e-4, 1.4e-3, **{"train.loss": "hinge"}), trial(7e-4, 1.4e-3, **{"train.loss": "hinge"})],
                 [trial(7e-4, 1.4e-3, **{"train.n_critic": 1}), trial(7e-4, 1.4e-3, **{"train.n_critic": 1.0})]):
        x, y = choose_axes(rows)
        assert (x.label, y.label) == ("lr_G (optim.g.lr)", "lr_D (optim.d.lr)")
        figures.append(figure := plot(rows, "fid", "min", "one point"))
        assert figure.axes[0].collections[0].get_offsets().tolist()[0] == pytest.approx([7e-4, 1.4e-3])


def test_categories_sort_with_none_first_and_keep_their_order_when_they_do_not_compare():
    ramps = [trial(7e-4, 1.4e-3, **{"train.condition_ramp": r}) for r in ([1000, 2500], None, [500, 2000])]
    x, _ = choose_axes(ramps, GRID)
    assert (x.tick_labels, x.positions) == (["None", "[500, 2000]", "[1000, 2500]"], [2.0, 0.0, 1.0])
    mixed = [trial(7e-4, 1.4e-3, **{"train.loss": v}) for v in ("hinge", 1, "1")]
    x, _ = choose_axes(mixed)
    assert (x.tick_labels, x.positions) == (["hinge", "1", "1"], [0.0, 1.0, 2.0])


def test_ranged_values_are_left_to_matplotlib_to_tick():
    rows = [trial(7e-4, 1.4e-3, **{"train.r1_gamma": g}) for g in (0.5, 2.25, 9.0)]
    assert choose_axes(rows)[0].ticks is None
    assert choose_axes(rows, GRID)[0].ticks == [0.5, 2.25, 9.0]


def test_the_csv_has_a_line_per_trial_with_its_searched_keys_last():
    rows = [trial(7e-4, 1.4e-3, **{"train.r1_gamma": g, "train.condition_ramp": [500, 2500]}) for g in (1.0, 10.0)]
    lines = to_csv(rows, "fid").splitlines()
    assert lines[0] == "trial,run_id,lr_g,lr_d,n_critic,status,reason,step,fid,train.r1_gamma,train.condition_ramp"
    assert lines[2].endswith(',TERMINATED,,,1.0,10.0,"[500, 2500]"')
