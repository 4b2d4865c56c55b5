"""Least-squares reconstruction: after a one-shot prune of channels that carried real signal, the re-fitted convs
bring the detector's outputs back much closer to the unpruned model's than constant compensation alone, without
touching the input model or the convs nothing upstream changed."""

from __future__ import annotations

import copy

import pytest
import torch

from prune import PruneConfig, PruneError, apply_plan, plan_pruning
from prune.reconstruct import execution_order
from tests.zoo import ZOO, randomize_bn
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def images(n_batches: int, seed: int, size: int = 96) -> list[tuple[torch.Tensor]]:
    """Smooth random images (uint8, like a dataloader's): upsampled noise, so neighbouring pixels correlate."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n_batches * 4, 3, size // 8, size // 8, generator=g)
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return [((big[i * 4 : (i + 1) * 4] * 255).to(torch.uint8),) for i in range(n_batches)]


def output_error(ref: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> float:
    """Squared error of the raw Detect maps, relative to how much the reference maps vary over images and cells
    (each output's constant part, its bias, would otherwise dominate)."""
    with torch.no_grad():
        a, b = ref(x)[1], model(x)[1]
    spread = [((u - u.mean((0, 2, 3), keepdim=True)) ** 2).mean() for u in a]
    return sum(float(((u - v) ** 2).mean() / s) for u, v, s in zip(a, b, spread)) / len(a)


@pytest.fixture(scope="module")
def case():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the convs' initial weights: the same model every run
        model = randomize_bn(ZOO["csp_focus_spp"].build(), seed=3).eval()
    plan = plan_pruning(model, PruneConfig(ratio=0.3, round_to=1, imgsz=96))
    return model, plan


def test_reconstruction_brings_the_outputs_back(case):
    model, plan = case
    before = copy.deepcopy(model.state_dict())
    plain = apply_plan(model, plan)
    rebuilt = apply_plan(model, plan, reconstruct=24, calib_loader=images(6, seed=0))
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k]), k
    x = images(2, seed=1)[0][0].float() / 255  # images the fit never saw
    e_plain, e_rebuilt = output_error(model, plain, x), output_error(model, rebuilt, x)
    assert e_plain > 0.05  # the cut channels carried signal
    assert e_rebuilt < 0.5 * e_plain
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in plain.parameters()]  # same architecture


def test_convs_with_unchanged_inputs_keep_their_weights(case):
    model, plan = case
    plain = apply_plan(model, plan)
    rebuilt = apply_plan(model, plan, reconstruct=8, calib_loader=images(2, seed=0))
    convs = [n for n, m in plain.named_modules() if isinstance(m, torch.nn.Conv2d)]
    first = execution_order(plain, torch.zeros(1, 3, 64, 64), convs)[0]
    assert torch.equal(plain.get_submodule(first).weight, rebuilt.get_submodule(first).weight)
    changed = [n for (n, a), b in zip(plain.named_parameters(), rebuilt.parameters()) if not torch.equal(a, b)]
    assert changed  # and the convs downstream of the cut were re-fitted


def test_execution_order_puts_a_c3_output_conv_after_its_bottlenecks():
    model = ZOO["yolov5n"].build().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    order = execution_order(model, torch.zeros(1, 3, 64, 64), names)
    assert sorted(order) == sorted(names)
    c3 = next(n.rsplit(".cv3", 1)[0] for n in names if n.endswith(".cv3.conv"))
    assert order.index(f"{c3}.cv3.conv") > max(order.index(n) for n in names if n.startswith(f"{c3}.m."))


def test_reconstruction_needs_images(case):
    model, plan = case
    with pytest.raises(PruneError, match="reconstruct"):
        apply_plan(model, plan, reconstruct=8)


def test_layer_by_layer_fit_equals_the_whole_model_fit(case):
    """The cached layer-by-layer runner is a speed-up only: the same convs get the same weights as running the
    whole model up to each conv."""
    from prune.apply import apply_plan as slice_only
    from prune.reconstruct import reconstruct_consumers

    model, plan = case
    x = [b[0].float() / 255 for b in images(3, seed=0)]
    fast, slow = slice_only(model, plan), slice_only(model, plan)
    names_fast = reconstruct_consumers(model, fast, plan, x, rows=600)
    names_slow = reconstruct_consumers(model, slow, plan, x, rows=600, layered=False)
    assert names_fast == names_slow and names_fast
    for (n, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), n


@pytest.mark.parametrize("kernel,stride,padding,dilation", [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2)])
def test_patches_at_picked_positions_match_unfold(kernel, stride, padding, dilation):
    from prune.reconstruct import _patches

    conv = torch.nn.Conv2d(5, 4, kernel, stride, padding, dilation)
    x = torch.randn(2, 5, 11, 9)
    out_hw = conv(x).shape[-2:]
    pick = torch.tensor([0, 3, out_hw[0] * out_hw[1] - 1, 7])
    cols = torch.nn.functional.unfold(x, kernel, dilation, padding, stride)[:, :, pick]  # (B, D, n)
    assert torch.equal(_patches(x, conv, pick, tuple(out_hw)), cols.permute(0, 2, 1).reshape(-1, cols.shape[1]))


def test_layer_cache_too_large_for_the_limit_falls_back_to_the_whole_model_path(case, monkeypatch):
    from prune import reconstruct as rc
    from prune.apply import apply_plan as slice_only

    model, plan = case
    x = [b[0].float() / 255 for b in images(2, seed=0)]
    need = rc._LayerRunner.cache_bytes(slice_only(model, plan), x)
    assert need > x[0][0].numel() * x[0].element_size() * 8  # more than one image's input: the layers' outputs too
    built = []
    monkeypatch.setattr(
        rc._LayerRunner, "advance", lambda self, k, f=rc._LayerRunner.advance: built.append(k) or f(self, k)
    )
    rc.reconstruct_consumers(model, slice_only(model, plan), plan, x, rows=300, cache_limit=2 * need - 1)
    assert not built  # the two caches (unpruned and pruned) over the limit: the whole-model path
    rc.reconstruct_consumers(model, slice_only(model, plan), plan, x, rows=300, cache_limit=2 * need)
    assert built  # within it: layer by layer


def bn_input_stats(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm: the per-channel mean and variance of what it receives on x (eval mode)."""
    got, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, a, name=name: got.__setitem__(name, (a[0].mean((0, 2, 3)), a[0].var((0, 2, 3))))))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return got


def test_refitted_batchnorms_hold_the_statistics_of_what_they_receive(case, monkeypatch):
    """Train mode normalises by batch statistics: a re-fitted BatchNorm must hold the fitted conv's own (with gamma
    and beta compensating), or the first fine-tuning step rescales the fit away. Eval outputs are unchanged."""
    import prune.reconstruct as rec

    model, plan = case
    calib = images(6, seed=0)
    fixed = apply_plan(model, plan, reconstruct=24, calib_loader=calib)
    monkeypatch.setattr(rec, "_own_statistics", lambda *a: None)
    borrowed = apply_plan(model, plan, reconstruct=24, calib_loader=calib)
    x = images(2, seed=1)[0][0].float() / 255
    with torch.no_grad():
        for u, v in zip(fixed.eval()(x)[1], borrowed.eval()(x)[1]):
            assert torch.allclose(u, v, rtol=1e-3, atol=1e-4)
    seen = bn_input_stats(fixed, torch.cat([b[0] for b in calib]).float() / 255)
    moved = 0
    for name, (mean, var) in seen.items():
        a, b = fixed.get_submodule(name), borrowed.get_submodule(name)
        if torch.equal(a.running_var, b.running_var):
            continue  # not re-fitted
        moved += 1
        assert stats_error(a, mean, var) < 0.1 < stats_error(b, mean, var), name
    assert moved >= 3


def stats_error(bn: torch.nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> float:
    """How far a BatchNorm's running statistics are from the measured ones, as the normalisation sees them (its
    eps added to both variances: a near-constant channel's exact variance changes nothing): squared mean offset in
    standard deviations plus squared log ratio of the variances, averaged over channels."""
    v = var + bn.eps
    return float(((bn.running_mean - mean) ** 2 / v).mean() + (((bn.running_var + bn.eps) / v).log() ** 2).mean())


def test_refitted_filters_keep_their_length_and_the_function(case):
    """The fit changes filters' lengths, and after a BatchNorm a filter's length sets how fast it trains; scaling
    each back to its pre-fit length, the BatchNorm absorbing the scale, changes no output."""
    from prune.apply import apply_plan as slice_only
    from prune.reconstruct import _own_bn, reconstruct_consumers

    model, plan = case
    x = [b[0].float() / 255 for b in images(3, seed=0)]
    kept, stretched, sliced = slice_only(model, plan), slice_only(model, plan), slice_only(model, plan)
    names = reconstruct_consumers(model, kept, plan, x, rows=600)
    assert names == reconstruct_consumers(model, stretched, plan, x, rows=600, keep_norms=False)
    moved = 0
    for name in names:
        if _own_bn(kept, plan, name, kept.get_submodule(name)) is None:
            continue  # a conv without its own BatchNorm (Detect) keeps the fitted length
        lengths = [m.get_submodule(name).weight.flatten(1).norm(dim=1) for m in (kept, stretched, sliced)]
        assert torch.allclose(lengths[0], lengths[2], rtol=1e-5), name
        moved += bool(((lengths[1] - lengths[2]).abs() > 0.2 * lengths[2]).any())
    assert moved  # the fit did change some filters' lengths
    probe = images(2, seed=1)[0][0].float() / 255
    with torch.no_grad():
        for u, v in zip(kept.eval()(probe)[1], stretched.eval()(probe)[1]):
            assert torch.allclose(u, v, rtol=1e-4, atol=1e-4)
        for u, v in zip(kept.train()(probe), stretched.train()(probe)):  # batch statistics: equal up to eps
            assert ((u - v) ** 2).mean() < 1e-3 * u.var()
