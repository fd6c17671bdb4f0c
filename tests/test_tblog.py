"""tblog: TensorBoard's event records checksummed in C, and events that TensorBoard's reader accepts."""

from __future__ import annotations

import os

from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

from backprop_lab.tblog import use_native_crc32c


def test_native_checksums_equal_tensorboards_own():
    assert use_native_crc32c()  # crc32c is a dependency, so the C checksum is in place
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c
    for data in (b"", b"\x00", os.urandom(7), os.urandom(300), os.urandom(40_000)):
        assert record_writer.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_records_written_with_it_pass_tensorboards_checksum_check(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    use_native_crc32c()
    writer = SummaryWriter(str(tmp_path))
    for step in range(5):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    # The pure-Python reader verifies both checksums of every record and raises on a mismatch.
    reader = pywrap_tensorflow.PyRecordReader_New(str(path))
    records = 0
    while True:
        try:
            reader.GetNext()
        except Exception as end:  # noqa: BLE001 - the stub signals the end with OutOfRangeError
            assert type(end).__name__ == "OutOfRangeError", end
            break
        records += 1
    assert records == 6  # the file-version event and five scalars


def _histograms(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"histograms": 0})
    acc.Reload()
    return [e.histogram_value for e in acc.Histograms(tag)]


def test_histograms_match_tensorboards_own_binning(tmp_path):
    # Our device-side histogram (add_histogram_raw) against SummaryWriter.add_histogram(bins=64), the
    # numpy reference, on the same values, read back from real event files.
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from backprop_lab.tblog import histogram_stats

    torch.manual_seed(0)
    cases = {"weights": torch.randn(256, 256), "constant": torch.full((10,), 0.25), "with_nan": torch.tensor([1.0, float("nan"), 3.0, 2.0])}
    ours, ref = SummaryWriter(str(tmp_path / "ours")), SummaryWriter(str(tmp_path / "ref"))
    for tag, values in cases.items():
        ours.add_histogram_raw(tag, global_step=0, **histogram_stats(values))
        ref.add_histogram(tag, values[torch.isfinite(values)], 0, bins=64)
    ours.close(), ref.close()
    for tag in cases:
        (a,), (b,) = _histograms(tmp_path / "ours", tag), _histograms(tmp_path / "ref", tag)
        assert (a.min, a.max, a.num) == (b.min, b.max, b.num)
        assert abs(a.sum - b.sum) <= 1e-6 * max(1.0, abs(b.sum)) and abs(a.sum_squares - b.sum_squares) <= 1e-6 * b.sum_squares
        # numpy's reference drops empty edge buckets; the same counts at the same right edges otherwise
        ours_buckets = {round(lim, 9): c for lim, c in zip(a.bucket_limit, a.bucket) if c}
        ref_buckets = {round(lim, 9): c for lim, c in zip(b.bucket_limit, b.bucket) if c}
        assert ours_buckets == ref_buckets, tag
    assert histogram_stats(torch.tensor([float("inf")])) is None
