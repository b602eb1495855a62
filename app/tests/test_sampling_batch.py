"""The batched sampler (core.sampling.sample_rows / sample_batch): all sampled rows in one pass on the
logits' device, each row with its own generator."""

import math

import torch

from tpserve.core.sampling import Failed, SamplingParams, make_generator, sample_batch, sample_rows


def test_frequencies_follow_the_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = SamplingParams(temperature=1.0, seed=7)
    gen = make_generator(p)
    counts = [0] * 4
    for _ in range(4000):
        counts[sample_rows(logits, [p], [gen])[0]] += 1
    expected = torch.softmax(logits[0], dim=-1).tolist()
    for c, e in zip(counts, expected, strict=True):
        assert abs(c / 4000 - e) < 4 * math.sqrt(e * (1 - e) / 4000) + 1e-3, (counts, expected)


def test_a_seeded_row_gives_the_same_tokens_alone_and_in_any_batch() -> None:
    torch.manual_seed(0)
    steps = [torch.randn(5, 50) for _ in range(20)]
    mine = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=1234)
    others = [SamplingParams(temperature=1.3, seed=s) for s in (1, 2, 3)] + [SamplingParams(temperature=0.5)]
    alone_gen = make_generator(mine)
    alone = [sample_rows(step[2:3], [mine], [alone_gen])[0] for step in steps]
    gens = [make_generator(p) for p in [others[0], others[1], mine, others[2], others[3]]]
    params = [others[0], others[1], mine, others[2], others[3]]
    batched = [sample_rows(step, params, gens)[2] for step in steps]
    assert alone == batched


def test_top_k_and_top_p_bound_the_choice() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]] * 2)
    params = [
        SamplingParams(temperature=2.0, top_k=2, seed=1),
        SamplingParams(temperature=1.0, top_p=0.01, seed=2),
    ]
    gens = [make_generator(p) for p in params]
    seen = [set(), set()]
    for _ in range(300):
        a, b = sample_rows(logits, params, gens)
        seen[0].add(a)
        seen[1].add(b)
    assert seen[0] == {0, 1} and seen[1] == {0}


def test_a_row_with_nan_fails_alone() -> None:
    logits = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 3.0, 1.0], [0.5, 0.1, 9.0]])
    params = [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(),
        SamplingParams(temperature=1.0, seed=3),
    ]
    out = sample_batch(logits, params, [make_generator(p) for p in params])
    assert isinstance(out[0], Failed) and out[1] == 1 and out[2] in (0, 1, 2)
