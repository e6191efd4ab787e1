"""The boot test: hygiene of the artefact, then QEMU boots (BIOS, UEFI, Secure Boot) with declarative guest checks."""

from __future__ import annotations

from assembler.boot.checks import BUILTIN_CHECKS_VERSION, CheckResult, CheckSuite, load_checks, parse_checks
from assembler.boot.junit import junit_xml, write_junit
from assembler.boot.qemu import firmwares
from assembler.boot.report import BootReport, BootResult, exit_status, print_summary, summary_table
from assembler.boot.runner import boot_disk, boot_test

__all__ = [
    "BUILTIN_CHECKS_VERSION",
    "BootReport",
    "BootResult",
    "CheckResult",
    "CheckSuite",
    "boot_disk",
    "boot_test",
    "exit_status",
    "firmwares",
    "junit_xml",
    "load_checks",
    "parse_checks",
    "print_summary",
    "summary_table",
    "write_junit",
]
