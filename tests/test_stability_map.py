"""The sweep's stability map puts each trial where the sweep varied it: at its rates, or at its searched keys when
every trial had the same rates."""

from orchestrator.tune.stability_map import choose_axes, plot


def trial(lr_g: float, lr_d: float, **params) -> dict:
    return {"lr_g": lr_g, "lr_d": lr_d, "params": params, "status": "TERMINATED", "reason": "", "metric": 1.0}


def test_trials_at_different_rates_are_placed_by_their_rates():
    x, y = choose_axes([trial(1e-4, 2e-4, **{"train.r1_gamma": 1.0}), trial(1e-4, 4e-4, **{"train.r1_gamma": 3.0})])
    assert (x.label, x.positions, x.log) == ("lr_G (optim.g.lr)", [1e-4, 1e-4], True)
    assert (y.label, y.positions, y.log) == ("lr_D (optim.d.lr)", [2e-4, 4e-4], True)


def test_trials_at_the_same_rates_are_placed_by_the_keys_that_vary():
    rows = [trial(7e-4, 1.4e-3, **{"train.r1_gamma": g, "train.loss": "hinge", "train.condition_ramp": ramp})
            for g in (1.0, 10.0) for ramp in ([500, 2000], [500, 2500])]
    x, y = choose_axes(rows)
    assert (x.label, x.positions, x.log, x.ticks) == ("train.r1_gamma", [1.0, 1.0, 10.0, 10.0], True, None)
    assert (y.label, y.positions, y.ticks) == ("train.condition_ramp", [0.0, 1.0, 0.0, 1.0],
                                               ["[500, 2000]", "[500, 2500]"])
    narrow = choose_axes([trial(7e-4, 1.4e-3, **{"train.r1_gamma": g}) for g in (1.0, 3.0)])
    assert narrow[0].positions == [1.0, 3.0] and not narrow[0].log and narrow[1].positions == [0.0, 0.0]
    figure = plot(rows, "fid", "min", "a grid")
    assert [figure.axes[0].get_xlabel(), figure.axes[0].get_ylabel()] == ["train.r1_gamma", "train.condition_ramp"]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["[500, 2000]", "[500, 2500]"]
