"""BigGAN's training parts (Brock et al. 2019): orthogonal regularization against a hand
computation, the truncation trick, gradient accumulation, the EMA's start, and a brief run on
digits that learns. The networks' structure: tests/test_biggan_nets.py."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict
from torch import nn

from gan_runner.errors import UserError
from gan_runner.regularizers import OrthogonalRegularization
from gan_runner.train import build_module, train
from helpers_quality import pixel_frechet, prepare, trace_of_covariance

# The recipe at 8 px and width 8 (G: 1 up-block, z 80 in 2 chunks of 40), attention where 8-px
# players have maps.
BIGGAN_TINY = [
    "model=biggan",
    "data=digits",
    "data.resolution=8",
    "data.batch_size=32",
    "arch.generator.attention_resolutions=[8]",
    "arch.discriminator.attention_resolutions=[4]",
    "arch.generator.width=8",
    "arch.discriminator.width=8",
    "arch.generator.shared_dim=16",
]


def test_orthogonal_term_equals_a_hand_computation() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Embedding(3, 4), nn.BatchNorm1d(6))
    beta = 1e-4
    w = net[0].weight.detach().double()
    # Σ_{i≠j} (w_i · w_j)² over the rows (filters) of the 6x5 weight, by loops.
    hand = sum(
        float(w[i] @ w[j]) ** 2 for i in range(w.shape[0]) for j in range(w.shape[0]) if i != j
    )
    paper = OrthogonalRegularization(beta, "paper").generator_penalty(net)
    assert (
        abs(float(paper.detach()) - beta * hand) < 1e-9
    )  # embeddings and 1-D parameters left out
    bgp = OrthogonalRegularization(beta, "biggan_pytorch").generator_penalty(net)
    assert abs(float(bgp.detach()) - 0.5 * beta * hand) < 1e-9
    # BigGAN-PyTorch's utils.ortho adds 2β(WWᵀ⊙(1−I))W to the gradient: ours, convention bgp.
    bgp.backward()
    weight = net[0].weight.detach()
    gram = weight @ weight.T
    expected = 2 * beta * (gram * (1 - torch.eye(6))) @ weight
    assert torch.allclose(net[0].weight.grad, expected, atol=1e-10)
    assert net[1].weight.grad is None and net[2].weight.grad is None


def test_orthogonal_rows_are_free() -> None:
    # Orthogonal filters of any norms cost nothing: only the off-diagonal of WWᵀ counts.
    net = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3, 4) * torch.tensor([[1.0], [5.0], [0.2]]))
    assert float(OrthogonalRegularization(1.0).generator_penalty(net)) == 0.0


def test_truncation_towards_zero_gives_one_image_per_class(make_cfg) -> None:
    module = build_module(make_cfg(*BIGGAN_TINY))
    noise = torch.Generator().manual_seed(0)
    z, _ = module.game.draw_latent(module, 6, noise, truncation=1e-6)
    assert z.abs().max() <= 1e-6  # components limited to [-ψ, ψ]
    same_class = module.sample(z, torch.full((6,), 3))
    assert (same_class - same_class[0]).abs().max() < 1e-4  # any z: the same image
    other = module.sample(z[:1], torch.tensor([5]))
    assert (other - same_class[:1]).abs().max() > 1e-2  # classes still differ
    wide = module.game.draw_latent(module, 4096, noise, truncation=0.5)[0]
    assert wide.abs().max() <= 0.5 and wide.std() > 0.2  # resampled, not clipped to the edge


def test_biggan_on_unlabelled_data_is_one_line(make_cfg) -> None:
    with pytest.raises(UserError, match="class-conditional") as error:
        train(make_cfg(*BIGGAN_TINY, "data.num_classes=0"))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="use a labelled data set"):
        build_module(make_cfg(*BIGGAN_TINY, "num_classes=0"))


def _one_generator_step(make_cfg, accumulate: int) -> dict[str, torch.Tensor]:
    # No batch-coupling layer and no random penalty: slices see exactly the big batch's rows.
    cfg = make_cfg(
        "data=ring8",
        "latent=normal",
        "regularizer=[]",
        "arch.generator.norm=none",
        "arch.discriminator.norm=none",
        "optimizer.generator._target_=torch.optim.SGD",
        "optimizer.discriminator._target_=torch.optim.SGD",
        "~optimizer.generator.betas",
        "~optimizer.discriminator.betas",
        "data.batch_size=64",
        "train.g_steps=2",
        "callbacks=none",
        f"accumulate={accumulate}",
    )
    run = prepare(cfg)
    game, sizes = run.module.game, []
    original = game.terms

    def counted(phase, batch, module, gain):
        sizes.append(next(iter(batch.values())).shape[0])
        return original(phase, batch, module, gain)

    game.terms = counted
    run.fit()
    assert sizes == [64 // accumulate] * (4 * accumulate)  # 2 batches x 2 phases x k slices
    return {k: v.clone() for k, v in run.module.state_dict().items()}


def test_accumulated_slices_equal_one_big_batch(make_cfg) -> None:
    whole = _one_generator_step(make_cfg, accumulate=1)
    sliced = _one_generator_step(make_cfg, accumulate=4)
    for key, value in whole.items():
        assert torch.allclose(value, sliced[key], atol=1e-6), key


def test_accumulate_must_divide_the_batch(make_cfg) -> None:
    with pytest.raises(UserError, match="data.batch_size=30 does not divide by it"):
        train(make_cfg("accumulate=4", "data.batch_size=30"))


def test_ema_copies_the_generator_until_its_start(make_cfg) -> None:
    def trained(g_steps: int):
        cfg = make_cfg("data=ring8", f"train.g_steps={g_steps}", "callbacks.ema.start_g_steps=3")
        with open_dict(cfg):
            for name in cfg.callbacks:
                if name != "ema":
                    cfg.callbacks[name] = None
        run = prepare(cfg)
        run.fit()
        live, ema = run.module.generator.state_dict(), run.module.generator_ema.state_dict()
        return all(torch.equal(live[k], ema[k]) for k in live)

    assert trained(3)  # before ema_start the average is G, bitwise
    assert not trained(5)  # then it lags


def test_biggan_learns_digits(make_cfg) -> None:
    cfg = make_cfg(*BIGGAN_TINY, "train.g_steps=300", "callbacks=none")
    run = prepare(cfg)
    before = pixel_frechet(run.module, run.datamodule.data)
    run.fit()
    after = pixel_frechet(run.module, run.datamodule.data)
    constant = trace_of_covariance(run.datamodule.data)
    summary = f"biggan 8px width 8, 300 G steps: pixel FD {before:.2f} -> {after:.2f}"
    print(summary)
    assert after <= 0.5 * before and after < constant, summary


def test_callbacks_none_drops_a_recipes_ema_settings_but_a_stray_node_is_one_line(make_cfg):
    module_cfg = make_cfg(*BIGGAN_TINY, "callbacks=none", "train.g_steps=1", "train.log_every=1")
    assert train(module_cfg)["train/g_steps"] == 1  # the recipe's callbacks.ema falls away
    with pytest.raises(UserError, match="callbacks.emaa sets half_life_kimg but"):
        train(make_cfg("+callbacks.emaa.half_life_kimg=3", "train.g_steps=1"))
