"""equal_width_counts: torch.histc's equal-width buckets, exactly, for the monitor's histograms and the batched ones.

The property tests force the fast path (elementwise ops and bincount) at every size by lowering
``_HISTC_BELOW`` to 0; small tensors otherwise go to histc itself."""

from __future__ import annotations

import math
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backprop_lab.batched.mlp import stacked_histograms
from backprop_lab.monitors import gradients
from backprop_lab.monitors.gradients import equal_width_counts, histogram_stats, histograms_stats

DTYPES = {"float32": (torch.float32, np.float32), "float64": (torch.float64, np.float64)}
# the largest magnitude drawn: (hi − lo)·bins stays finite in the dtype (beyond it histc's buckets are undefined)
LARGEST = {"float32": 1e36, "float64": 1e300}
TINIEST = {"float32": 1e-40, "float64": 1e-310}  # below the smallest normal: denormals
MLP_SHAPES = [(256, 2), (256,), (256, 256), (256,), (1, 256)]


@contextmanager
def fast_path():
    """equal_width_counts without its histc shortcut for small tensors."""
    with mock.patch.object(gradients, "_HISTC_BELOW", 0):
        yield


def edges(v: torch.Tensor) -> tuple[float, float]:
    """lo and hi as histograms_stats takes them: the extremes, or ±0.5 around the one value."""
    smallest, largest = (t.item() for t in torch.aminmax(v))
    return (smallest - 0.5, largest + 0.5) if smallest == largest else (smallest, largest)


def histc_counts(v: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    return torch.histc(v, bins, min=lo, max=hi).to(torch.float64)


@st.composite
def value_sets(draw) -> tuple[str, np.ndarray]:
    """A dtype name and 1-D values of that dtype, drawn to hit the buckets' edges and the dtype's corners."""
    name = draw(st.sampled_from(sorted(DTYPES)))
    np_dtype = DTYPES[name][1]
    width = 32 if name == "float32" else 64

    def floats(lo: float, hi: float):
        return st.floats(float(np_dtype(lo)), float(np_dtype(hi)), width=width)  # subnormals where the range holds them

    n = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["any", "integers", "linspace", "equal", "tiny_range", "denormal", "negative"]))
    big = LARGEST[name]
    if kind == "any":
        values = draw(st.lists(floats(-big, big), min_size=1, max_size=n))
    elif kind == "integers":  # on the edges of bins that divide the range
        low = draw(st.integers(-1000, 1000))
        values = draw(st.lists(st.integers(low, low + draw(st.integers(0, 256))), min_size=1, max_size=n))
    elif kind == "linspace":  # a grid, possibly the buckets' own edges
        lo = draw(floats(-1e6, 1e6))
        hi = lo + draw(floats(0, 1e6))
        steps = draw(st.sampled_from([2, 3, 11, 65, 129, n]))
        values = torch.linspace(lo, hi, steps, dtype=DTYPES[name][0]).tolist()
    elif kind == "equal":  # one value: the buckets around it, ±0.5 (for huge values the edges round onto it)
        x = draw(floats(-big, big) | st.sampled_from([0.0, 1.0, -3.0, 1e10]))
        values = [x] * draw(st.integers(1, n))
    elif kind == "tiny_range":  # a few ulps wide
        grid = [np_dtype(draw(floats(-1e20, 1e20)))]
        for _ in range(8):
            grid.append(np.nextafter(grid[-1], np_dtype(math.inf)))
        values = draw(st.lists(st.sampled_from(grid), min_size=1, max_size=n))
    elif kind == "denormal":
        tiny = TINIEST[name]
        values = draw(st.lists(floats(-tiny, tiny), min_size=1, max_size=n))
    else:  # negative: a range below zero
        hi = -draw(floats(0, big / 4))
        lo = hi - draw(floats(0, big / 4))
        values = draw(st.lists(floats(lo, hi), min_size=1, max_size=n))
    return name, np.asarray(values, dtype=np_dtype)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(value_sets(), st.sampled_from([1, 2, 3, 7, 10, 64, 100]))
@example(("float32", np.array([0.0, 1.0, 2.0, 63.0, 64.0], np.float32)), 64)
@example(("float32", np.array([1e10] * 3, np.float32)), 64)  # 1e10 ± 0.5 round to 1e10 in float32
@example(("float64", np.array([5e-324, 1e-323], np.float64)), 64)
@example(("float32", np.array([-1e36, 1e36], np.float32)), 64)
@example(("float64", np.array([7.0], np.float64)), 64)
def test_equal_width_counts_is_histc(drawn, bins):
    name, values = drawn
    v = torch.from_numpy(values)
    lo, hi = edges(v)
    want = histc_counts(v, lo, hi, bins)
    with fast_path():
        got = equal_width_counts(v, lo, hi, bins)
    assert got.dtype == torch.float64 and torch.equal(got, want), (name, values.tolist(), lo, hi, got, want)
    assert torch.equal(equal_width_counts(v, lo, hi, bins), want)  # the default path too
    # The same values as rows: per-row edges as (rows, 1) tensors in the dtype (equal edges there: bucket 0).
    rows = torch.stack([v, v.flip(0), -v])
    if torch.tensor(lo, dtype=v.dtype) == torch.tensor(hi, dtype=v.dtype):
        return
    lows, highs = zip(*(edges(r) for r in rows))
    dtype = v.dtype
    got = equal_width_counts(
        rows, torch.tensor(lows, dtype=dtype)[:, None], torch.tensor(highs, dtype=dtype)[:, None], bins
    )
    want = torch.stack([histc_counts(r, a, b, bins) for r, a, b in zip(rows, lows, highs)])
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_large_tensors_take_the_fast_path_exactly(name):
    dtype = DTYPES[name][0]
    generator = torch.Generator().manual_seed(0)
    cases = [
        torch.randn(65536, generator=generator, dtype=dtype),
        torch.randint(-50, 50, (10000,), generator=generator).to(dtype),  # on the edges
        torch.linspace(-3.0, 5.0, 64 * 100 + 1, dtype=dtype),  # every edge, many times
        torch.rand(5000, generator=generator, dtype=dtype) * 1e-30,
    ]
    for v in cases:
        assert v.numel() >= gradients._HISTC_BELOW
        lo, hi = edges(v)
        assert torch.equal(equal_width_counts(v, lo, hi, 64), histc_counts(v, lo, hi, 64))


def reference_stats(t: torch.Tensor, bins: int = 64) -> dict | None:
    """histogram_stats as it was, with torch.histc, one tensor at a time."""
    v = t.detach().reshape(-1)
    v = v if v.dtype == torch.float64 else v.float()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return None
    smallest, largest = v.min().item(), v.max().item()
    lo, hi = (smallest - 0.5, largest + 0.5) if smallest == largest else (smallest, largest)
    return {
        "min": smallest,
        "max": largest,
        "num": v.numel(),
        "sum": v.sum(dtype=torch.float64).item(),
        "sum_squares": torch.dot(v, v).to(torch.float64).item(),
        "bucket_limits": torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist(),
        "bucket_counts": [0.0, *torch.histc(v, bins, min=lo, max=hi).to(torch.float64).tolist()],
    }


def test_histograms_stats_as_with_histc():
    generator = torch.Generator().manual_seed(1)
    tensors = [torch.randn(s, generator=generator) for s in MLP_SHAPES]
    tensors += [t.double() for t in tensors[:3]]
    tensors += [
        torch.full((300,), 2.5),  # one value
        torch.tensor([4.0]),  # one element
        torch.tensor([1.0, math.nan, -2.0, math.inf, 3.0]),  # non-finite left out
        torch.tensor([math.nan, math.inf]),  # none finite
        torch.empty(0),
        torch.arange(-64, 65, dtype=torch.float32).repeat(50),  # on the edges, above the histc shortcut
        torch.randn(70000, generator=generator).half(),  # other dtypes are binned as float32
    ]
    got = histograms_stats(tensors)
    want = [reference_stats(t) for t in tensors]
    assert got == want
    assert [histogram_stats(t) for t in tensors] == want
    with fast_path():
        assert histograms_stats(tensors) == want


def test_histograms_stats_as_numpy_where_numpy_agrees_with_histc():
    """TensorBoard's own add_histogram bins with np.histogram(v, bins=64): its edges, not histc's formula, so a
    value within an ulp of an edge may land one bucket apart. Where the two agree, the monitor's counts are numpy's."""
    generator = torch.Generator().manual_seed(2)
    agreed = 0
    for i in range(40):
        dtype = torch.float64 if i % 2 else torch.float32
        n = [2, 256, 512, 5000, 65536][i % 5]
        t = torch.randn(n, generator=generator, dtype=dtype) * 10.0 ** (i % 7 - 3)
        numpy_counts = np.histogram(t.numpy(), bins=64)[0].astype(np.float64).tolist()
        stats = histograms_stats([t])[0]
        assert stats["bucket_counts"][1:] == reference_stats(t)["bucket_counts"][1:]
        if numpy_counts == reference_stats(t)["bucket_counts"][1:]:
            agreed += 1
            assert stats["bucket_counts"][1:] == numpy_counts
        assert sum(stats["bucket_counts"]) == n
    assert agreed >= 30


def test_stacked_histograms_buckets_as_single_tensors():
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(6, 5000, generator=generator)
    rows[1] = 7.0  # one value
    rows[2] = torch.arange(5000) % 129 - 64.0  # on the edges
    rows[3, 17] = math.nan  # through the monitor's own function
    rows[4] *= 1e-39  # denormals
    for got, row in zip(stacked_histograms(rows), rows):
        want = histogram_stats(row)
        assert (got["bucket_counts"], got["bucket_limits"], got["min"], got["max"], got["num"]) == (
            want["bucket_counts"],
            want["bucket_limits"],
            want["min"],
            want["max"],
            want["num"],
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_equal_width_counts_on_cuda_is_cuda_histc():
    generator = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        for v in [
            torch.randn(65536, generator=generator, dtype=dtype),
            torch.randn(300, generator=generator, dtype=dtype),
            torch.randint(-50, 50, (10000,), generator=generator).to(dtype),
            torch.linspace(-3.0, 5.0, 6401, dtype=dtype),
            torch.full((10,), 1e10, dtype=dtype),
        ]:
            v = v.cuda()
            lo, hi = edges(v)
            want = torch.histc(v, 64, min=lo, max=hi).double()
            assert torch.equal(equal_width_counts(v, lo, hi, 64), want)
            assert torch.equal(equal_width_counts(v.cpu(), lo, hi, 64), want.cpu())
