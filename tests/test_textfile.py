"""A user's text file (`tgmae.textfile`): UTF-8 with or without a BOM is read; any other encoding
is one line naming file:line, the byte and its column (re-trial 24A T2: a UnicodeDecodeError
traceback naming no file), also from a DataLoader worker."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from tgmae.errors import UserError, worker_user_error
from tgmae.textfile import NotUtf8Error, open_text, read_text


def test_utf8_is_read_and_a_bom_dropped(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9\r\nx\n")
    assert read_text(f) == "café\r\nx\n"
    assert read_text(f, bom=False) == "\ufeffcafé\r\nx\n"
    assert open_text(f).readlines() == ["café\r\n", "x\n"]  # line ends as csv wants them


@pytest.mark.parametrize("data,line,column", [
    (b"path,label\nv.mp4,caf\xe9\n", 2, 10),
    (b"\xef\xbb\xbfcaf\xe9", 1, 4),  # the BOM takes no column
    (b"a\n\xc3\xa9t\xc3\xa9 \x93quoted\x94\n", 2, 5),  # columns count characters, not bytes
])
def test_another_encoding_is_one_line_naming_file_line_byte_and_column(tmp_path, data, line, column):
    f = tmp_path / "list.csv"
    f.write_bytes(data)
    with pytest.raises(NotUtf8Error) as e:
        read_text(f)
    assert isinstance(e.value, UserError)
    assert str(e.value).startswith(f"{f}:{line}: not UTF-8 (byte 0x")
    assert str(e.value).endswith(f" at column {column}); save it as UTF-8") and "\n" not in str(e.value)


class ReadsInWorker(Dataset):
    def __init__(self, path):
        self.path = path

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return read_text(self.path)


def test_a_worker_that_reads_a_latin1_file_gives_the_one_line(tmp_path):
    f = tmp_path / "captions.jsonl"
    f.write_bytes(b'{"video_id": "caf\xe9"}\n')
    with pytest.raises(Exception) as e:
        next(iter(DataLoader(ReadsInWorker(f), num_workers=1)))
    assert worker_user_error(e.value) == f"{f}:1: not UTF-8 (byte 0xe9 at column 18); save it as UTF-8"
