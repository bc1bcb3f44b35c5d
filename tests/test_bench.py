"""`make bench`: the plain loop does gan-run's work exactly, the outputs have their documented
fields, and the speed options (src/gan_runner/speed.py) do what their settings say."""

from __future__ import annotations

import json
import logging
import os
from functools import partial

import pytest
import torch

import gan_runner.speed as speed
from conftest import QUICK, TINY_DIGITS
from gan_runner.bench.run import main
from gan_runner.bench.timing import Variant, compose_run, paired_ratio_ci, train_variant
from gan_runner.errors import UserError
from gan_runner.speed import SpeedSettings, apply_speed_options
from gan_runner.train import build_module

TINY_MLP = [
    "data=grid25",
    "arch.generator.hidden=[32,32]",
    "arch.discriminator.hidden=[32,32]",
    "data.source.n_samples=640",
    "data.batch_size=64",
    "train.log_every=3",
]
# Penalty, critic schedule, LR schedule, class labels and several epochs (1,797 / 64 batches).
TINY_WGAN_GP = [
    "model=wgan_gp",
    *TINY_DIGITS,
    "num_classes=10",
    "n_critic=2",
    "schedule=linear_decay",
    "train.log_every=2",
]

# InfoGAN: codes in z and the MI loss on the critic's Q head (bench/plain_infogan.py).
TINY_INFOGAN = ["model=infogan", *TINY_DIGITS, "data.batch_size=32", "train.log_every=2"]


@pytest.mark.parametrize(
    "overrides",
    [TINY_MLP, TINY_WGAN_GP, [*TINY_MLP, "trainer.precision=bf16-mixed"], TINY_INFOGAN],
    ids=["mlp", "wgan_gp", "mlp_bf16_mixed", "infogan"],
)
def test_the_plain_loop_and_gan_run_train_to_identical_weights(overrides, tmp_path):
    cfg = compose_run([*QUICK, "callbacks=none", "metrics=[]", *overrides], tmp_path)
    cpu = torch.device("cpu")
    plain_window, plain = train_variant(Variant("plain"), cfg, 3, 30, cpu)
    gan_window, gan_run = train_variant(Variant("gan_run"), cfg, 3, 30, cpu)
    assert (plain_window.d_steps, plain_window.g_steps) == (gan_window.d_steps, gan_window.g_steps)
    assert gan_run.counters.d_steps == 33 and gan_run.counters.g_steps > 3
    trained = gan_run.state_dict()
    assert trained.keys() == plain.state_dict().keys()
    for name, value in plain.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_a_change_in_the_work_shows_up_as_different_weights(tmp_path):
    # The check above could pass vacuously if nothing trained: one fewer batch must differ.
    cfg = compose_run([*QUICK, "callbacks=none", "metrics=[]", *TINY_MLP], tmp_path)
    cpu = torch.device("cpu")
    _, plain = train_variant(Variant("plain"), cfg, 3, 30, cpu)
    _, gan_run = train_variant(Variant("gan_run"), cfg, 3, 29, cpu)
    differ = [
        name
        for name, value in plain.state_dict().items()
        if not torch.equal(value, gan_run.state_dict()[name])
    ]
    assert differ


CASE_FIELDS = {"case", "what", "overrides", "batch_size", "n_critic", "plain", "gan_run"}
CASE_FIELDS |= {"ratio", "ratio_of_medians", "peak_mib", "warmup_batches", "timed_batches"}
CASE_FIELDS |= {"ratio_ci95"}
RATE_FIELDS = {"images_per_s", "g_steps_per_s", "runs_images_per_s"}


def test_the_harness_writes_json_and_markdown_with_the_documented_fields(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--quick", "--case", "mlp_grid25", "--ablation", "log_every_n_g_steps"]
    args += ["--repeats", "1", "--seconds", "0.01", "--out", str(out), "--name", "tiny"]
    args += [f"--override={o}" for o in TINY_MLP[1:4]]
    assert main(args) == 0
    results = json.loads((out / "tiny.json").read_text())
    assert {"schema", "created", "command", "machine", "settings", "cases", "ablations"} <= set(
        results
    )
    assert {"device", "device_name", "torch_threads", "loadavg_start", "loadavg_end"} <= set(
        results["machine"]
    )
    (case,) = results["cases"]
    assert set(case) >= CASE_FIELDS and case["case"] == "mlp_grid25"
    assert set(case["plain"]) >= RATE_FIELDS and set(case["gan_run"]) >= RATE_FIELDS
    assert case["ratio"] > 0 and "arch.generator.hidden=[32,32]" in case["overrides"]
    (ablation,) = results["ablations"]
    assert ablation["before_variant"]["overrides"] == ["train.log_every=1"]
    assert ablation["speedup"] > 0 and set(ablation["after"]) >= RATE_FIELDS
    assert {row["path"] for row in results["data"]} >= {"in-memory, batched by index (gan-run)"}
    (metric,) = results["metrics"]
    assert metric["ratio"] > 0 and metric["ours"]["images_per_s"] > 0
    markdown = (out / "tiny.md").read_text()
    for heading in ("Training throughput", "Fast paths", "Data loading", "Metric feature"):
        assert heading in markdown
    assert "| `mlp_grid25` |" in markdown and markdown in capsys.readouterr().out


def test_the_ratio_interval_holds_the_median_and_widens_with_the_scatter():
    steady = paired_ratio_ci([100, 101, 99, 100, 100, 101], [100, 100, 100, 100, 100, 100])
    scattered = paired_ratio_ci([80, 125, 95, 110, 70, 130], [100, 100, 100, 100, 100, 100])
    assert steady[0] <= 1.0 <= steady[1] and scattered[0] <= 1.025 <= scattered[1]
    assert scattered[1] - scattered[0] > 5 * (steady[1] - steady[0])
    assert paired_ratio_ci([1, 2, 3], [1, 1, 1]) is None  # too few rounds to say
    assert paired_ratio_ci([2.0] * 5, [1.0] * 5) == [2.0, 2.0]


def test_bad_harness_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["--parts", "cases,speedz", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["--quick", "--override", "n_critc=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not compose" in err and "\n" not in err
    assert main(["--parts", "ablations", "--ablation", "fused", "--out", str(tmp_path)]) == 2
    assert "choose from" in capsys.readouterr().err and not list(tmp_path.iterdir())


# ----------------------------------------------------------------- speed options
def _conv_module(tmp_path, *overrides: str):
    return build_module(compose_run([*QUICK, *TINY_DIGITS, *overrides], tmp_path))


def test_channels_last_converts_the_convolution_weights_only_when_asked(tmp_path):
    module = _conv_module(tmp_path)
    apply_speed_options(module, {"channels_last": False, "tf32": False})
    conv = next(p for p in module.discriminator.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert not conv.is_contiguous(memory_format=torch.channels_last)
    apply_speed_options(module, {"channels_last": True})
    assert conv.is_contiguous(memory_format=torch.channels_last)
    images = torch.zeros(2, 1, 8, 8)
    assert module.discriminator(images).shape == (2,)


def test_compile_leaves_a_gradient_penalty_critic_eager_and_says_so(tmp_path, caplog):
    module = _conv_module(tmp_path, "model=wgan_gp")
    with caplog.at_level(logging.WARNING, logger="gan_runner.speed"):
        apply_speed_options(module, SpeedSettings(compile=True, tf32=False))
        apply_speed_options(module, SpeedSettings(compile=True, tf32=False))  # idempotent
    assert module.generator._compiled_call_impl is not None
    assert module.discriminator._compiled_call_impl is None
    assert "regularizer=gradient_penalty" in caplog.text
    assert list(module.state_dict()) == list(_conv_module(tmp_path, "model=wgan_gp").state_dict())


class _OnGPU:
    """A parameter stand-in that says it lives on a CUDA GPU (CI has none)."""

    is_cuda = True

    def __init__(self, floating: bool = True) -> None:
        self.floating = floating

    def is_floating_point(self) -> bool:
        return self.floating


def test_fused_optimizers_are_chosen_only_on_a_gpu_and_only_where_the_config_chose_none():
    adam, rmsprop = partial(torch.optim.Adam, lr=1e-3), partial(torch.optim.RMSprop, lr=1e-3)
    on_gpu, on_cpu = [_OnGPU(), _OnGPU()], [torch.nn.Parameter(torch.zeros(2))]
    assert speed.fused_keywords(adam, on_gpu) == {"fused": True}
    assert speed.fused_keywords(partial(torch.optim.SGD, lr=0.1), on_gpu) == {"fused": True}
    assert speed.fused_keywords(adam, on_cpu) == {}  # CPUs keep torch's default
    assert speed.fused_keywords(adam, [*on_gpu, *on_cpu]) == {}
    assert speed.fused_keywords(adam, [_OnGPU(floating=False)]) == {}
    assert speed.fused_keywords(rmsprop, on_gpu) == {}  # no fused kernel
    assert speed.fused_keywords(partial(adam, foreach=False), on_gpu) == {}  # the config's choice
    assert speed.fused_keywords(partial(adam, fused=False), on_gpu) == {}


def test_fused_preference_builds_the_configured_optimizer_unchanged_on_a_cpu(
    tmp_path, monkeypatch
):
    module = _conv_module(tmp_path)
    apply_speed_options(module, SpeedSettings(tf32=False))
    apply_speed_options(module, SpeedSettings(tf32=False))  # idempotent: wrapped once
    assert isinstance(module.optimizer_factories["generator"], speed.FusedOnGPU)
    assert not isinstance(module.optimizer_factories["generator"].make, speed.FusedOnGPU)
    built = module.configure_optimizers()
    d_opt, g_opt = built[0] if isinstance(built, tuple) else built  # with or without schedules
    for opt, net, make in (
        (d_opt, module.discriminator, module.optimizer_factories["discriminator"].make),
        (g_opt, module.generator, module.optimizer_factories["generator"].make),
    ):
        assert isinstance(opt, make.func) and not opt.defaults.get("fused")
        assert opt.defaults["lr"] == make.keywords["lr"]
        assert opt.param_groups[0]["params"] == list(net.parameters())
    # Where the decision says fused (on a GPU), the factory builds it so: CPU Adam has the kernel.
    monkeypatch.setattr(speed, "fused_keywords", lambda make, params: {"fused": True})
    make_generator = module.optimizer_factories["generator"]
    assert make_generator(module.generator.parameters()).defaults["fused"]


def test_speed_settings_refuse_unknown_keys_and_non_booleans():
    with pytest.raises(UserError, match="speed.channel_last is not a speed setting"):
        SpeedSettings.from_mapping({"channel_last": True})
    with pytest.raises(UserError, match="speed.compile='yes' must be true or false"):
        SpeedSettings.from_mapping({"compile": "yes"})


def test_tf32_is_set_through_the_api_lightning_reads_and_leaves_cpu_math_alone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu_before = torch.backends.mkldnn.matmul.fp32_precision
    before = torch.get_float32_matmul_precision()
    try:
        speed.set_tf32(True)
        assert torch.get_float32_matmul_precision() == "high"  # what Lightning checks
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before
        speed.set_tf32(False)
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.mkldnn.matmul.fp32_precision = cpu_before


def test_without_a_gpu_the_per_step_nvml_probe_is_turned_off(monkeypatch):
    monkeypatch.setenv(speed.NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    speed.skip_per_step_gpu_probe()
    assert os.environ[speed.NVML_CHECK] == "1"  # a GPU: Lightning's check stays
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    speed.skip_per_step_gpu_probe()
    assert os.environ[speed.NVML_CHECK] == "0"
