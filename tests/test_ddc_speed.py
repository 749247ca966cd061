"""The faster DDC-HM step (issue 13) computes what the slower one did."""


import torch

from ddchm.ddc import DDCHelmholtzMachine
from ddchm.models import Bernoulli, HierarchicalModel
from ddchm.models.exact import pair_log_prob


def sbn(dims=(3, 6, 12), seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers, parent = [], None
    for dim in dims:
        layers.append(Bernoulli(dim, parent, init_scale=1.0))
        parent = dim
    return HierarchicalModel(layers).to(dtype)


def test_wake_targets_without_subnormal_weights_match_the_exact_weighted_sum():
    # a wide observation layer makes the importance weights span hundreds of orders of
    # magnitude, as on MNIST: the flushed weights must not move the targets
    model = sbn(dims=(5, 20, 300), seed=2)
    with torch.no_grad():
        model.layers[0].weight.mul_(3.0)
    ddc = DDCHelmholtzMachine(model, n_features=[20, 10], sleep_samples=500, generator=1)
    x = model.sample(40, generator=6)[0]
    sleep = ddc.dream()
    features = ddc.encode(sleep[1:])
    with torch.no_grad():  # the same weights, subnormals kept
        w = torch.softmax(pair_log_prob(model.observation, x, sleep[1]), dim=1)
    assert ((w > 0) & (w < torch.finfo(w.dtype).tiny)).any()  # the case the flush is for
    w = w.double()
    targets, ess = ddc.wake_targets(x, sleep, features)
    for got, f in zip(targets, features):
        exact = w @ f.double()
        assert torch.allclose(got.double(), exact, atol=1e-6, rtol=1e-5)
    assert torch.allclose(ess.double(), 1 / (w**2).sum(1), rtol=1e-5)
