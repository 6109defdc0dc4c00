"""A boot that times out says where the guest stopped: the console's last line, cleaned and cut."""

from __future__ import annotations

from pathlib import Path

from builder.verify.boot import console_tail


def test_the_last_printable_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(
        b"SeaBIOS (version 1.16)\r\nBooting from Hard Disk...\r\n[    2.1] Run /init as init process\r\n\r\n"
    )
    assert console_tail(log) == "the console's last line: '[    2.1] Run /init as init process'"


def test_a_silent_console_and_a_missing_log_are_told_apart(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1b[2J\x1b[0;0H\r\n\x00\x07\n")
    assert console_tail(log) == "the console stayed silent"
    assert console_tail(tmp_path / "never.log") == "the console log was never written"


def test_the_guests_escapes_are_dropped_and_a_long_line_is_cut(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1b[31mcloud-init\x1b[0m \x1b]0;title\x07" + b"x" * 5000 + b"\n")
    tail = console_tail(log, limit=40)
    assert "\x1b" not in tail and "\x07" not in tail
    assert tail.endswith("…'") and len(tail) < 80


def test_only_the_end_of_a_large_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"early line\n" * 100_000 + b"login: \n")
    assert console_tail(log) == "the console's last line: 'login:'"
