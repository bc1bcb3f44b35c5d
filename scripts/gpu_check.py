"""One-off GPU check: WGAN-GP DCGAN on digits in 16-mixed and bf16-mixed, SN-D under autocast."""

import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, "tests")
from conftest import compose_config  # noqa: E402
from gan_runner.module import GANModule  # noqa: E402
from gan_runner.regularizers import GradientPenalty  # noqa: E402
from gan_runner.train import assemble, build_trainer  # noqa: E402

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"
G_STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
OUT = Path(os.environ.get("OUT", "/tmp/h1out"))
ACCEL = ["trainer.accelerator=gpu"] if DEVICE == "cuda" else ["trainer.accelerator=cpu"]


def ref_gp(inputs, weight, target):
    with torch.autocast(DEVICE, enabled=False):
        real, fake = inputs.real.detach().float(), inputs.fake.detach().float()
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        eps = torch.rand(shape, device=real.device, generator=inputs.noise)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (g,) = torch.autograd.grad(inputs.critic(mixed, None).float().sum(), mixed)
        return weight * ((g.flatten(1).pow(2).sum(1) + 1e-12).sqrt() - target).pow(2).mean()


def run(name, overrides, clip=None, g_steps=G_STEPS):
    rec = {"penalty_dtypes": set(), "penalty_rel_err": [], "clip": [], "scale": [], "logs": []}
    orig_pen, orig_hook, orig_log = (
        GradientPenalty.discriminator_penalty,
        GANModule.on_before_optimizer_step,
        GANModule._log_step,
    )

    def pen(self, inputs):
        state = inputs.noise.get_state()
        term = orig_pen(self, inputs)
        rec["penalty_dtypes"].add(str(term.dtype))
        if len(rec["penalty_rel_err"]) < 20:
            gen = torch.Generator(device=inputs.real.device).set_state(state)
            exp = ref_gp(replace(inputs, noise=gen), self.weight, self.target)
            error = abs(float(term) - float(exp)) / max(abs(float(exp)), 1e-12)
            rec["penalty_rel_err"].append(error)
        return term

    def hook(self, opt):
        def norm():
            gs = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            return float(torch.nn.utils.get_total_norm(gs))

        before = norm()
        orig_hook(self, opt)
        if self._optimizer_names[id(opt)] == "discriminator":
            rec["clip"].append((before, norm()))
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            rec["scale"].append(float(scaler.get_scale()))

    def log_step(self, logs):
        rec["logs"].append({k: float(v) for k, v in logs.items()})
        return orig_log(self, logs)

    GradientPenalty.discriminator_penalty = pen
    GANModule.on_before_optimizer_step = hook
    GANModule._log_step = log_step
    try:
        cfg = compose_config(
            [
                *ACCEL,
                "trainer.enable_progress_bar=false",
                "logger=none",
                "callbacks=none",
                "metrics=[]",
                f"train.g_steps={g_steps}",
                "train.log_every=10",
                *overrides,
            ],
            OUT / name,
        )
        run_ = assemble(cfg)
        crit_dtypes = set()
        run_.module.discriminator.register_forward_hook(
            lambda m, i, o: crit_dtypes.add((torch.is_autocast_enabled(DEVICE), str(o.dtype)))
        )
        trainer = build_trainer(cfg, run_.callbacks, run_.loggers)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.fit(run_.module, datamodule=run_.datamodule)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finally:
        GradientPenalty.discriminator_penalty = orig_pen
        GANModule.on_before_optimizer_step = orig_hook
        GANModule._log_step = orig_log
    m = run_.module
    finite = [c for c in rec["clip"] if math.isfinite(c[0])]
    res = {
        "run": name,
        "precision": str(trainer.precision),
        "seconds": round(seconds, 1),
        "g_steps": m.counters.g_steps,
        "d_steps": m.counters.d_steps,
        "critic_forward_dtypes": sorted(map(str, crit_dtypes)),
        "penalty_dtypes": sorted(rec["penalty_dtypes"]),
        "penalty_max_rel_err_vs_fp32": max(rec["penalty_rel_err"], default=None),
        "losses_all_finite": all(math.isfinite(v) for logs in rec["logs"] for v in logs.values()),
        "last_logs": rec["logs"][-1] if rec["logs"] else None,
        "d_steps_nonfinite_grad": len(rec["clip"]) - len(finite),
    }
    if clip:
        binding = [c for c in finite if c[0] > clip]
        res.update(
            clip=clip,
            clip_binding_fraction=round(len(binding) / max(len(finite), 1), 3),
            max_post_clip_norm=max((c[1] for c in finite), default=None),
            min_post_clip_norm_when_binding=min((c[1] for c in binding), default=None),
            median_pre_clip_norm=(
                sorted(c[0] for c in finite)[len(finite) // 2] if finite else None
            ),
        )
    if rec["scale"]:
        res.update(
            scale_init=rec["scale"][0], scale_min=min(rec["scale"]), scale_final=rec["scale"][-1]
        )
    if "sn" in name:
        res["sn_sigmas"] = sn_sigmas(m.discriminator)
    print(json.dumps(res, default=str), flush=True)
    return res


@torch.no_grad()
def sn_sigmas(critic):
    critic.eval()
    out = []
    for mod in critic.modules():
        if torch.nn.utils.parametrize.is_parametrized(mod, "weight"):
            w = mod.weight.float()
            if isinstance(mod, torch.nn.ConvTranspose2d):
                w = w.transpose(0, 1)
            s = torch.linalg.matrix_norm(w.flatten(1), ord=2)
            u = mod.parametrizations.weight[0]._u
            out.append((round(float(s), 4), str(u.dtype), bool(torch.isfinite(u).all())))
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    info = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    import lightning

    info["lightning"] = lightning.__version__
    print(json.dumps(info), flush=True)
    wgan = ["model=wgan_gp", "data=digits", "arch=dcgan", "grad_clip.discriminator=1.0"]
    results = [info]
    for prec in ("16-mixed", "bf16-mixed"):
        results.append(run(f"wgan_gp_{prec}", [*wgan, f"trainer.precision={prec}"], clip=1.0))
    sn_steps = max(G_STEPS // 3, 2)
    for prec in ("16-mixed", "bf16-mixed"):
        results.append(
            run(
                f"sngan_sn_{prec}",
                ["model=sngan", "data=digits", f"trainer.precision={prec}"],
                g_steps=sn_steps,
            )
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
