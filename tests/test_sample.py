"""`gan-sample` end to end on checkpoints trained here: every mode, its options and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUICK, TINY_DIGITS, call_console, compose_config, compose_named
from gan_runner import cli
from gan_runner.callbacks.samples import to_uint8_grid
from gan_runner.checkpoints import rebuild
from gan_runner.errors import UserError
from gan_runner.metrics.base import to_uint8
from gan_runner.sample import (
    arithmetic_latent,
    class_labels,
    draw_latent,
    generate,
    interpolate,
    sample,
)

TINY = [*TINY_DIGITS, "train.g_steps=3", "train.log_every=1"]
RUNS = {
    # conditional, normal latent
    "conditional": [*TINY, "num_classes=10"],
    # unconditional, uniform latent, an EMA that lags the live generator (no ramp-up)
    "uniform": [*TINY, "latent=uniform", "callbacks.ema.rampup=null"],
    # 2D points
    "ring": ["data=ring8", "arch.generator.hidden=[16]", "arch.discriminator.hidden=[16]"]
    + ["train.g_steps=3", "train.log_every=1"],
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gan_runner.train import train

    paths = {}
    for name, overrides in RUNS.items():
        run = tmp_path_factory.mktemp(name)
        train(compose_config([*QUICK, *overrides], run))
        paths[name] = run / "checkpoints" / "last.ckpt"
    return paths


def run_sample(path: Path, *overrides: str) -> list[Path]:
    """gan-sample's logic on conf/sample.yaml composed with overrides, in this process."""
    return sample(compose_named("sample", [f"ckpt={path}", *overrides]))


def console(monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> tuple[int, str, str]:
    return call_console(cli.sample, "gan-sample", monkeypatch, capsys, *args)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_grid_has_the_size_of_n_and_nrow(ckpt, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = console(monkeypatch, capsys, f"ckpt={ckpt['conditional']}", "n=10", "nrow=4")
    assert code == 0, err
    grid = tmp_path / "grid.png"
    assert f"Wrote {grid.resolve()}" in out
    assert Image.open(grid).size == (4 * 10 + 2, 3 * 10 + 2)  # 8-pixel tiles, 2-pixel padding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no run folder, no log


def test_folder_writes_exactly_n_images(ckpt, tmp_path) -> None:
    out = tmp_path / "fakes"
    run_sample(ckpt["conditional"], "mode=folder", "n=5", "batch_size=2", f"out={out}")
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)]
    assert all(
        Image.open(out / f).size == (8, 8) and Image.open(out / f).mode == "L" for f in files
    )
    with pytest.raises(UserError, match="not an empty folder"):
        run_sample(ckpt["conditional"], "mode=folder", "n=5", f"out={out}")


def test_interpolation_frames_start_and_end_at_the_endpoint_samples(ckpt, tmp_path) -> None:
    out = tmp_path / "walk.png"
    written = run_sample(
        ckpt["conditional"],
        "mode=interpolate",
        "interpolation.pairs=3",
        "interpolation.steps=5",
        f"out={out}",
    )
    assert written == [out, out.with_suffix(".gif")]
    assert Image.open(out).size == (5 * 10 + 2, 3 * 10 + 2)  # steps columns, pairs rows
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames == 5 and gif.info["loop"] == 0
    module, _ = rebuild(ckpt["conditional"])
    ends = draw_latent(module, 6, torch.Generator().manual_seed(0), None).view(3, 2, -1)
    labels = class_labels(module, None, 0, 3)
    for frame, end in [(0, 0), (4, 1)]:
        gif.seek(frame)
        expected = to_uint8_grid(generate(module, ends[:, end], labels), nrow=3)[0].numpy()
        assert np.array_equal(np.asarray(gif.convert("L")), expected)


def test_interpolation_paths_hit_their_endpoints_exactly() -> None:
    z = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    for spherical in (True, False):
        path = interpolate(z[0], z[1], 7, spherical)
        assert path.shape == (4, 7, 16)
        assert torch.equal(path[:, 0], z[0]) and torch.equal(path[:, -1], z[1])
    same = interpolate(z[0], z[0], 3, spherical=True)  # parallel ends: no 0/0
    assert torch.allclose(same, z[0][:, None].expand(-1, 3, -1))


def test_class_label_changes_samples_and_is_checked(ckpt, tmp_path) -> None:
    path = ckpt["conditional"]
    three, four = tmp_path / "3.png", tmp_path / "4.png"
    run_sample(path, "class_label=3", f"out={three}")
    run_sample(path, "class_label=4", f"out={four}")
    assert not np.array_equal(pixels(three), pixels(four))
    run_sample(path, "class_label=[1,2]", "n=4", f"out={tmp_path / 'cycled.png'}")
    with pytest.raises(UserError, match=r"out of range: the model has 10 classes.*0 to 9"):
        run_sample(path, "class_label=10", f"out={tmp_path / 'x.png'}")
    with pytest.raises(UserError, match="unconditional model .*drop class_label"):
        run_sample(ckpt["uniform"], "class_label=1", f"out={tmp_path / 'x.png'}")


def test_truncation_narrows_latents_and_samples(ckpt) -> None:
    for name in ("conditional", "uniform"):
        module, _ = rebuild(ckpt[name])
        spread = {}
        for psi in (None, 0.2):
            z = draw_latent(module, 256, torch.Generator().manual_seed(0), psi)
            spread[psi] = generate(module, z, class_labels(module, 0, 0, 256)).var(0).mean()
            if psi is not None:
                assert z.abs().max() <= psi
        assert spread[0.2] < spread[None]
    with pytest.raises(UserError, match="truncation=1.5 is not valid for latent=Uniform"):
        run_sample(ckpt["uniform"], "truncation=1.5")


def test_arithmetic_renders_mean_a_minus_b_plus_c(ckpt, tmp_path, capsys) -> None:
    path, sheet, out = ckpt["uniform"], tmp_path / "candidates.png", tmp_path / "sum.png"
    run_sample(path, "mode=arithmetic", "arithmetic.candidates=12", f"out={sheet}")
    assert "arithmetic.a=[i,j,k]" in capsys.readouterr().out and sheet.is_file()
    groups = ["arithmetic.a=[0,1,2]", "arithmetic.b=[3,4,5]", "arithmetic.c=[6,7,8]"]
    run_sample(path, "mode=arithmetic", "arithmetic.candidates=12", *groups, f"out={out}")
    module, _ = rebuild(path)
    z = draw_latent(module, 12, torch.Generator().manual_seed(0), None)
    result = arithmetic_latent(z, [0, 1, 2], [3, 4, 5], [6, 7, 8])
    assert torch.allclose(result, z[:3].mean(0) - z[3:6].mean(0) + z[6:9].mean(0))
    # Rows a, b, c (three exemplars and their mean), then the result and 8 neighbours.
    assert Image.open(out).size == (9 * 10 + 2, 4 * 10 + 2)
    expected = to_uint8(generate(module, result[None], None))[0, 0].numpy()
    assert np.array_equal(pixels(out)[32:40, 2:10, 0], expected)  # row 3, column 0
    with pytest.raises(UserError, match="arithmetic.b, arithmetic.c not set"):
        run_sample(path, "mode=arithmetic", "arithmetic.a=[0]")
    with pytest.raises(UserError, match=r"arithmetic.c=\[99\] must list indices from 0 to 11"):
        run_sample(
            path, "mode=arithmetic", "arithmetic.candidates=12", *groups[:2], "arithmetic.c=[99]"
        )


def test_ema_and_live_generators_differ(ckpt, tmp_path) -> None:
    ema, live = tmp_path / "ema.png", tmp_path / "live.png"
    run_sample(ckpt["uniform"], "use_ema=true", f"out={ema}")
    run_sample(ckpt["uniform"], "use_ema=false", f"out={live}")
    assert not np.array_equal(pixels(ema), pixels(live))


def test_same_seed_writes_identical_bytes(ckpt, tmp_path) -> None:
    outputs = {}
    for name, seed in [("first", 0), ("again", 0), ("other", 1)]:
        out = tmp_path / name / "walk.png"
        run_sample(ckpt["conditional"], "mode=interpolate", f"seed={seed}", f"out={out}")
        outputs[name] = out.read_bytes() + out.with_suffix(".gif").read_bytes()
    assert outputs["first"] == outputs["again"] != outputs["other"]


def test_points_models_write_scatter_and_csv(ckpt, tmp_path) -> None:
    path = ckpt["ring"]
    run_sample(path, "n=50", f"out={tmp_path / 'scatter.png'}")
    assert Image.open(tmp_path / "scatter.png").size == (500, 500)
    run_sample(path, "mode=folder", "n=50", f"out={tmp_path / 'points'}")
    lines = (tmp_path / "points" / "points.csv").read_text().splitlines()
    assert lines[0] == "x,y" and len(lines) == 51
    with pytest.raises(UserError, match="mode=interpolate renders images.*2D points"):
        run_sample(path, "mode=interpolate", f"out={tmp_path / 'walk.png'}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "error: ckpt is not set; pass ckpt=<run folder>/checkpoints/last.ckpt"),
        (["ckpt={missing}"], "error: ckpt={missing} does not exist; pass a checkpoint"),
        (["ckpt={ckpt}", "mode=mosaic"], "error: mode=mosaic is unknown; choose one of: grid"),
        (["ckpt={ckpt}", "n=0"], "error: n=0 is invalid: it must be an integer >= 1"),
        (["ckpt={ckpt}", "truncation=0"], "error: truncation=0 is not valid"),
        (
            ["ckpt={ckpt}", "rejection.method=drs", "rejection.percentile=high"],
            "error: rejection.percentile='high' is invalid: it must be a number in [0, 1]",
        ),
        (
            ["ckpt={ckpt}", "rejection.method=drs", "rejection.burn_in=0"],
            "error: rejection.burn_in=0 is invalid: it must be an integer >= 1",
        ),
    ],
)
def test_console_errors_are_one_line(ckpt, tmp_path, monkeypatch, capsys, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    fill = {"ckpt": ckpt["conditional"], "missing": tmp_path / "nope.ckpt"}
    code, _, err = console(monkeypatch, capsys, *(a.format(**fill) for a in args))
    assert code == 2
    assert err.startswith(expected.format(**fill)), err
    assert err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------- rejection sampling
def read_points(folder: Path) -> torch.Tensor:
    rows = (folder / "points.csv").read_text().splitlines()[1:]
    return torch.tensor([[float(v) for v in row.split(",")] for row in rows])


def test_drs_keeps_the_samples_the_discriminator_rates_real(tmp_path, capsys) -> None:
    from gan_runner.rejection import log_ratio_of
    from gan_runner.train import train

    # Long enough for the critic to tell the ring from the blob the generator still spreads.
    train(compose_config([*QUICK, "data=ring8", "train.g_steps=300"], tmp_path / "run"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    plain, kept = tmp_path / "plain", tmp_path / "drs"
    common = ["mode=folder", "n=2000", "batch_size=500", "rejection.burn_in=2000"]
    run_sample(path, *common, f"out={plain}")
    run_sample(path, *common, f"out={kept}", "rejection.method=drs")
    assert "Rejection sampling (DRS): kept" in capsys.readouterr().out
    module, _ = rebuild(path)
    log_ratio = log_ratio_of(module)
    before, after = read_points(plain), read_points(kept)
    assert before.shape == after.shape == (2000, 2)
    # Kept points score higher under the critic than the generator's own draws: the filter
    # selects by p_data / p_g; a broken one (random or inverted) would not, by many s.e.
    lift = log_ratio(after, None).mean() - log_ratio(before, None).mean()
    spread = log_ratio(before, None).std() / 2000**0.5
    print(f"lift {lift:.3f}, s.e. {spread:.4f}")
    assert lift > 5 * spread, (lift, spread)


def test_drs_works_on_conditional_images_and_refuses_other_modes(ckpt, tmp_path) -> None:
    out = tmp_path / "grid.png"
    run_sample(ckpt["conditional"], "n=12", "nrow=4", f"out={out}", "rejection.method=drs")
    assert Image.open(out).size == (4 * 10 + 2, 3 * 10 + 2)
    with pytest.raises(UserError, match="mode=interpolate needs every latent"):
        run_sample(ckpt["conditional"], "mode=interpolate", "rejection.method=drs")
    with pytest.raises(UserError, match="rejection.method=mh is unknown; choose drs or null"):
        run_sample(ckpt["conditional"], "rejection.method=mh")


def test_an_output_without_an_image_extension_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = call_console(
        cli.sample, "gan-sample", monkeypatch, capsys, "ckpt=missing.ckpt", f"out={tmp_path}/notes"
    )
    assert code == 2 and err.count("\n") == 1
    assert "names no image format" in err and ".png" in err
