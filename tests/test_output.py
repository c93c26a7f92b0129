"""A job's captured output: files capped to their tail, and a reader following one as it is cut."""
from __future__ import annotations

import re

from queuectl.core.output import CUT_NOTE, CappedFile, Follower, read_from

LINE = 16


def line(i: int) -> bytes:
    return b"%015d\n" % i


def stream(start: int, length: int) -> bytes:
    """Bytes `start` to `start + length` of the stream line(0) line(1) ..."""
    first, offset = divmod(start, LINE)
    count = (offset + length + LINE - 1) // LINE
    return b"".join(line(i) for i in range(first, first + count))[offset:offset + length]


def check_followed(text: bytes, total: int) -> int:
    """Asserts that `text`, what a Follower printed of the whole stream, is the stream in order with
    each cut replaced by its note on a line of its own; returns how many notes it has."""
    at, notes, pos = 0, 0, 0
    pattern = re.compile(re.escape(CUT_NOTE).replace(b"%d", rb"(\d+)"))
    while pos < len(text):
        note = pattern.search(text, pos)
        end = note.start() if note else len(text)
        part = text[pos:end]
        if note and part.endswith(b"\n") and not stream(at, len(part)).endswith(b"\n"):
            part = part[:-1]  # the newline the note was put on its own line with
        assert part == stream(at, len(part)), (at, part[:40])
        at += len(part)
        if not note:
            break
        notes += 1
        at += int(note[1])
        pos = note.end()
    assert at == total
    return notes


def test_a_follower_falling_behind_prints_each_byte_once_and_notes_each_cut(tmp_path):
    path = str(tmp_path / "out")
    sink = CappedFile(path, 100)
    follower = Follower(path)
    printed = [follower.poll()]  # before the first byte: nothing, and no error
    written = 0
    for i in range(400):
        sink.write(line(i)[:7])  # lines split across writes: cuts fall mid-line
        sink.write(line(i)[7:])
        written += LINE
        if (i % 3 == 0 and not 100 <= i < 300) or i % 40 == 0:  # in step, then far behind, then in step
            printed.append(follower.poll())
    sink.close()
    printed += [follower.poll(), follower.end()]
    text = b"".join(printed)
    assert check_followed(text, written) >= 2
    assert text.endswith(line(399))


def test_read_from_a_file_not_made_yet_is_empty(tmp_path):
    assert read_from(str(tmp_path / "none"), 42) == (42, b"")


def test_a_read_that_a_cut_overtakes_is_not_taken_for_the_old_offsets(tmp_path, monkeypatch):
    """The writer cuts the file in place (truncates and rewrites it) between the reader's look at
    its head and its read of the rest: the bytes read then are the new file's, and must not be
    handed out as the stream's first bytes (they were: the note printed as output, lines twice)."""
    import builtins

    from queuectl.core import output

    path = str(tmp_path / "out")
    sink = CappedFile(path, 100)
    sink.write(stream(0, 150))  # under twice the cap: not cut yet
    cut = []

    class CutOnSecondRead:
        def __init__(self, f):
            self.f, self.reads = f, 0

        def read(self, *args):
            self.reads += 1
            if self.reads == 2 and not cut:
                cut.append(True)
                sink.write(stream(150, 100))  # past 200 bytes: cut to its last 100 now
            return self.f.read(*args)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = builtins.open
    monkeypatch.setattr(output, "open", lambda *a, **k: CutOnSecondRead(real_open(*a, **k)), raising=False)
    follower = Follower(path)
    text = follower.poll()
    monkeypatch.undo()
    assert cut
    sink.close()
    text += follower.poll()
    assert check_followed(text, 250) == 1
    assert follower.end() == b"\n"  # the stream ends mid-line
