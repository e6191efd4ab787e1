"""The results as a table (stdout) and as the generated part of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchkit.measure import MIB, ratio

TARGETS = {  # ratio limits or seconds: the cold build's from issue 20 (the edit loop), the rest from issue 8
    "cold_vs_dib": 0.35, "cold_vs_mkosi": 0.6, "noop_seconds": 5.0, "laststep_vs_cold": 0.4,
    "disk_vs_virt_make_fs": 0.25, "convert_vs_qemu_img": 1.1, "qcow2_vs_used": 1.05,
}


def fmt_s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{int(value // 60)} min {value % 60:04.1f} s"


def fmt_r(value: float | None, limit: float | None = None) -> str:
    if value is None:
        return "—"
    verdict = "" if limit is None else (" ok" if value <= limit else " MISS")
    return f"{value:.2f}x{verdict}"


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(row, assembler, peer / reference, ratio, target) lines for stdout and BENCHMARKS.md."""
    rows: list[tuple[str, str, str, str, str]] = []
    b = results.get("build", {})
    a = b.get("assembler", {})
    if b:
        for peer, key, limit in (("dib", "ratio_vs_dib", TARGETS["cold_vs_dib"]),
                                 ("mkosi", "ratio_vs_mkosi", TARGETS["cold_vs_mkosi"])):
            p = b.get(peer, {})
            peer_text = (fmt_s(p.get("median_s")) if p.get("median_s") else
                         f"failed ({p['failed']} of {p['runs']} runs)" if p.get("failed") else "not run")
            rows.append((f"cold build vs {peer}", fmt_s(a.get("median_s")), f"{peer}: {peer_text}",
                         fmt_r(b.get(key), limit), f"≤ {limit}x"))
        empty = b.get("assembler-empty-store", {})
        if empty.get("median_s") or empty.get("failed"):
            for peer, key, limit in (("dib", "empty_store_ratio_vs_dib", TARGETS["cold_vs_dib"]),
                                     ("mkosi", "empty_store_ratio_vs_mkosi", TARGETS["cold_vs_mkosi"])):
                rows.append((f"cold build, empty package store, vs {peer}", fmt_s(empty.get("median_s")),
                             f"{peer}: {fmt_s(b.get(peer, {}).get('median_s'))}", fmt_r(b.get(key), limit),
                             f"≤ {limit}x"))
        growth, dib_growth = a.get("disk_peak_growth_mib"), b.get("dib", {}).get("disk_peak_growth_mib")
        if growth is not None and dib_growth is not None:  # issue 20: a build costs no more disk than DIB's
            rows.append(("disk growth per cold build vs dib", f"+{growth} MiB", f"dib: +{dib_growth} MiB",
                         "ok" if growth <= dib_growth else "MISS", "≤ dib"))
        for side in ("assembler", "assembler-empty-store", "dib", "mkosi"):
            s = b.get(side, {})
            if s.get("median_s"):
                rows.append((f"  {side} peak mem / disk", f"{s.get('peak_pss_mib')} MiB PSS",
                             f"disk +{s.get('disk_peak_growth_mib')} MiB peak, du {s.get('du_mib')} MiB", "", ""))
    for label, entry in (("cold", a), ("last-step", results.get("rebuild", {}).get("laststep", {}))):
        phases, split = entry.get("phases_median", {}), entry.get("rootfs_breakdown_median", {})
        if phases:
            text = ", ".join(f"{k} {fmt_s(v)}" for k, v in phases.items())
            inner = ", ".join(f"{k.removesuffix('_s')} {fmt_s(v)}" for k, v in split.items())
            rows.append((f"  assembler {label}: phases", text, f"rootfs = {inner}" if inner else "", "", ""))
    r = results.get("rebuild", {})
    if r:
        n = r["noop"]["median_s"]
        rows.append(("no-change rebuild", fmt_s(n), "", "ok" if n is not None and n <= 5 else "MISS", "≤ 5 s"))
        rows.append(("last-step change rebuild", fmt_s(r["laststep"]["median_s"]), f"cold {fmt_s(a.get('median_s'))}",
                     fmt_r(r.get("laststep_vs_cold"), TARGETS["laststep_vs_cold"]), "≤ 0.4x cold"))
    d = results.get("disk", {})
    if d:
        rows.append(("disk assembly (disk phase)", fmt_s(d.get("assembler_disk_phase_median_s")),
                     f"virt-make-fs {fmt_s(d['virt_make_fs'].get('median_s'))}",
                     fmt_r(d.get("ratio_phase_vs_virt_make_fs"), TARGETS["disk_vs_virt_make_fs"]), "≤ 0.25x"))
        rows.append(("disk assembly (whole CLI)", fmt_s(d["assembler_cli"].get("median_s")), "",
                     fmt_r(d.get("ratio_cli_vs_virt_make_fs"), TARGETS["disk_vs_virt_make_fs"]), "≤ 0.25x"))
    for fmt_name, c in results.get("convert", {}).items():
        if not isinstance(c, dict):
            continue
        rows.append((f"convert {fmt_name}", fmt_s(c["assembler"].get("median_s")),
                     f"qemu-img {fmt_s(c['qemu_img'].get('median_s'))}",
                     fmt_r(c.get("ratio"), TARGETS["convert_vs_qemu_img"]), "≤ 1.1x"))
    conv = results.get("convert", {})
    if conv.get("cli_startup_median_s") is not None:
        rows.append(("  assembler CLI start (convert --help)", fmt_s(conv["cli_startup_median_s"]), "", "", "(info)"))
    z = results.get("size", {})
    if z:
        used = z.get("used_bytes", 0) / MIB
        if "qcow2_bytes" in z:
            rows.append(("qcow2 size vs used blocks", f"{z['qcow2_bytes'] / MIB:.0f} MiB", f"used {used:.0f} MiB",
                         fmt_r(z.get("qcow2_vs_used"), TARGETS["qcow2_vs_used"]), "≤ 1.05x"))
        if "vmdk_bytes" in z:
            rows.append(("vmdk size vs used blocks", f"{z['vmdk_bytes'] / MIB:.0f} MiB", f"used {used:.0f} MiB",
                         fmt_r(z.get("vmdk_vs_used")), "(info)"))
        if "dib_qcow2_bytes" in z:
            rows.append(("DIB qcow2 size", "", f"{z['dib_qcow2_bytes'] / MIB:.0f} MiB (compressed)", "", "(info)"))
    t = results.get("boot", {})
    if t:
        am, dm = t["assembler"].get("median_s"), t["dib_login"].get("median_s")
        verdict = "—" if am is None or dm is None else ("ok" if am < dm else "MISS")
        rows.append((f"boot to checks passed ({t.get('accelerator')}, bios)", fmt_s(am),
                     f"DIB login prompt {fmt_s(dm)}", verdict, "< DIB login"))
        rows.append(("  of which: hygiene / boot / checks",
                     " / ".join(fmt_s(t.get(f"assembler_{k}_median"))
                                for k in ("hygiene_seconds", "boot_seconds", "checks_seconds")), "", "", ""))
        if t.get("assembler_kernel_seconds_median") is not None:
            rows.append(("  boot to SSH: firmware / kernel / userspace",
                         " / ".join(fmt_s(t.get(f"assembler_{k}_seconds_median"))
                                    for k in ("firmware", "kernel", "userspace")), "", "", ""))
    m = results.get("matrix", {})
    if m.get("workers_1") and m.get("workers_2"):
        one, two = m["workers_1"], m["workers_2"]
        rows.append(("matrix --run, 3 entries: 2 workers vs 1", fmt_s(two.get("seconds")),
                     f"1 worker {fmt_s(one.get('seconds'))}", fmt_r(m.get("ratio_2_vs_1"), 1.0), "< 1x"))
        rows.append(("  phases built / distinct in the plan", f"{two.get('built')} / {two.get('computed_once')}",
                     f"1 worker: {one.get('built')} / {one.get('computed_once')}", "", "equal"))
    p = results.get("profile", {})
    if "flatten_s" in p:
        rows.append(("  rootfs post-build: save / flatten / index",
                     " / ".join(fmt_s(p.get(k)) for k in ("docker_save_s", "flatten_s", "layer_index_s")),
                     "", "", "(info)"))
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("row", "assembler", "peer / reference", "ratio", "target")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(5)]
    for line in (head, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)))


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """New rows replace old ones; the build row merges per side (a run of one peer keeps the others)."""
    merged = {**old, **new}
    if "build" in old and "build" in new:
        build = {**old["build"], **new["build"]}
        a = build.get("assembler", {}).get("median_s")
        build["ratio_vs_dib"] = ratio(a, build.get("dib", {}).get("median_s"))
        build["ratio_vs_mkosi"] = ratio(a, build.get("mkosi", {}).get("median_s"))
        empty = build.get("assembler-empty-store", {}).get("median_s")
        build["empty_store_ratio_vs_dib"] = ratio(empty, build.get("dib", {}).get("median_s"))
        build["empty_store_ratio_vs_mkosi"] = ratio(empty, build.get("mkosi", {}).get("median_s"))
        merged["build"] = build
    return merged


def markdown(doc: dict[str, Any], rows: list[tuple[str, str, str, str, str]]) -> str:
    """The generated part of BENCHMARKS.md: machine, exact command, table."""
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"Taken {m['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB RAM), {m['os']}, "
        f"kernel {m['kernel']}, tree {m['git']}.",
        "",
        f"Versions: {versions}.",
        "",
        f"Command: `{doc['command']}` (repeat {doc['repeat']}, slow rows {doc['slow_repeat']}, "
        f"warm-up {doc['warmup']}; {doc['seconds']:.0f} s in all).",
        "",
        "| row | assembler | peer / reference | ratio | target |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def update_benchmarks(path: Path, text: str) -> None:
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    old = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in old or end not in old:
        old += f"\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")
