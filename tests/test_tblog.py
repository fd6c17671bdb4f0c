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
