"""Build secrets without an engine: the Containerfile rewrite, the loopback server, the leak scan, masking."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from assembler import secrets
from assembler.config import ImageConfig, ImageSpec
from assembler.errors import ConfigError
from tests.unit.bomdata import tar

DECLARED = {"tok": object(), "api": object()}


def _secret(sid: str, value: bytes) -> secrets.Secret:
    return secrets.Secret(sid, "test", value)


def test_a_containerfile_without_secret_mounts_is_unchanged() -> None:
    text = "FROM x\n# a comment\nRUN apt-get update && \\\n    apt-get install -y curl\nCOPY a /b\n"
    assert secrets.rewrite(text, DECLARED) == (text, [])


def test_secret_mounts_become_a_classic_run_keeping_the_command_and_line_structure() -> None:
    text = ("FROM x\nRUN --mount=type=secret,id=tok \\\n    --mount=type=secret,id=api,env=API \\\n"
            "    ./use.sh && \\\n    echo done\nRUN echo plain\n")
    out, used = secrets.rewrite(text, DECLARED)
    assert used == ["api", "tok"]
    assert "--mount" not in out
    lines = out.split("\n")
    assert lines[0] == "FROM x" and lines[-2] == "RUN echo plain"
    assert lines[1].startswith("RUN [ -d /run/secrets ]") and lines[1].endswith("\\")
    assert lines[2:4] == ["    ./use.sh && \\", "    echo done"]
    assert "assembler-secrets tok /run/secrets/tok api /run/secrets/.env-api" in lines[1]
    assert 'API="$(cat /run/secrets/.env-api)"; export API; rm -f /run/secrets/.env-api;' in lines[1]
    assert "chmod 400 /run/secrets/tok;" in lines[1]
    assert "trap 'rm -f /run/secrets/tok /run/secrets/.env-api;" in lines[1]


def test_target_defaults_id_and_mode_follow_buildkit() -> None:
    mount = secrets.parse_mount("--mount=type=secret,target=/root/.netrc,mode=0440", "here")
    assert mount == secrets.Mount(".netrc", "/root/.netrc", None, 0o440)
    assert secrets.parse_mount("--mount=type=secret,id=a", "here") == secrets.Mount("a", "/run/secrets/a", None,
                                                                                    0o400)
    assert secrets.parse_mount("--mount=type=cache,target=/var/cache/apt", "here") is None
    assert secrets.parse_mount("--network=host", "here") is None


@pytest.mark.parametrize(("text", "message"), [
    ("RUN --mount=type=secret,id=nope cat /run/secrets/nope", "secret 'nope' is not declared"),
    ('RUN --mount=type=secret,id=tok ["cat", "/run/secrets/tok"]', "shell form"),
    ("RUN --mount=type=secret,id=tok --mount=type=cache,target=/x true", "cannot be combined"),
    ("RUN --mount=type=secret,id=tok,target=/a/../etc/x true", "absolute path"),
    ("RUN --mount=type=secret,id=tok,target=/a;b true", "absolute path"),
    ("RUN --mount=type=secret,id=tok,env=1BAD true", "not a variable name"),
    ("RUN --mount=type=secret,id=tok,uid=1000 true", "uid/gid"),
    ("RUN --mount=type=secret,id=tok,mode=rw true", "not octal"),
    ("RUN --mount=type=secret,id=tok,src=/etc/passwd true", "unknown option src"),
])
def test_bad_secret_mounts_are_one_clear_error_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        secrets.rewrite("FROM x\n" + text + "\n", DECLARED, name="Containerfile")
    assert message in str(err.value) and "Containerfile:2" in err.value.brief


def test_image_yaml_secret_sources_are_typed() -> None:
    config = ImageConfig.model_validate({"secrets": {"tok": {"env": "TOKEN"}, "n.rc": {"file": "../netrc"}}})
    assert config.secrets["tok"].env == "TOKEN" and config.secrets["n.rc"].file == "../netrc"
    for bad in ({"tok": {}}, {"tok": {"env": "A", "file": "b"}}, {"tok": {"value": "inline"}},
                {"-x": {"env": "A"}}, {"tok": {"env": "A B"}}):
        with pytest.raises(ValidationError):
            ImageConfig.model_validate({"secrets": bad})


def _spec(tmp_path: Path, secret_map: dict[str, dict[str, str]], ignore: str | None = None) -> ImageSpec:
    context = tmp_path / "img"
    context.mkdir(exist_ok=True)
    (context / "Containerfile").write_text("FROM x\nRUN --mount=type=secret,id=tok true\n")
    if ignore is not None:
        (context / ".dockerignore").write_text(ignore)
    return ImageSpec(name="img", context=context, containerfile=context / "Containerfile",
                     config=ImageConfig.model_validate({"secrets": secret_map}))


def test_values_are_read_from_env_and_files_and_refused_inside_the_context(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_FOR_TEST", "v1")
    (tmp_path / "outside").write_bytes(b"v2\n")
    spec = _spec(tmp_path, {"tok": {"env": "TOKEN_FOR_TEST"}, "f": {"file": "../outside"}})
    found = secrets.load(spec, ["tok", "f"])
    assert found["tok"].value == b"v1" and found["f"].value == b"v2\n" and found["f"].source == "file ../outside"
    (spec.context / "creds").write_text("inside")
    with pytest.raises(ConfigError) as err:
        secrets.load(_spec(tmp_path, {"tok": {"file": "creds"}}), ["tok"])
    assert "in the build context" in err.value.details and ".dockerignore" in err.value.details
    ignored = _spec(tmp_path, {"tok": {"file": "creds"}}, ignore="creds\n")
    assert secrets.load(ignored, ["tok"])["tok"].value == b"inside"
    monkeypatch.delenv("TOKEN_FOR_TEST")
    with pytest.raises(ConfigError) as err:
        secrets.load(_spec(tmp_path, {"tok": {"env": "TOKEN_FOR_TEST"}, "f": {"file": "../missing"}}), ["tok", "f"])
    assert "TOKEN_FOR_TEST is not set" in err.value.details and "../missing" in err.value.details


def test_prepare_writes_the_rewrite_into_a_private_copy_never_the_users_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_FOR_TEST", "v1")
    spec = _spec(tmp_path, {"tok": {"env": "TOKEN_FOR_TEST"}})
    original = spec.containerfile.read_text()
    prepared = secrets.prepare(spec, spec.context, tmp_path / "work")
    assert spec.containerfile.read_text() == original
    assert prepared.context == tmp_path / "work" / "context" and set(prepared.values) == {"tok"}
    assert "--mount" not in (prepared.context / "Containerfile").read_text()


def _ask(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(line)
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_server_answers_only_this_builds_token_and_declared_ids() -> None:
    values = {"tok": _secret("tok", b"\x00binary\xffvalue")}
    with secrets.serving(values) as (entry, served):
        port, token = entry.removeprefix("assembler-secret-").removesuffix(".invalid").split("-")
        assert _ask(int(port), f"{token} tok\n".encode()) == b"\x00binary\xffvalue"
        assert _ask(int(port), f"{'0' * 32} tok\n".encode()) == b""
        assert _ask(int(port), f"{token} other\n".encode()) == b""
        assert served == {"tok": 1}
    with secrets.serving({}) as (entry, served):
        assert entry == "" and served == {}
    assert secrets.no_proxy_with("", "e") == "e" and secrets.no_proxy_with("localhost", "e") == "localhost,e"


def test_redact_masks_values_and_their_lines() -> None:
    values = {"a": _secret("a", b"line-one-value\nline-two-value\n"), "b": _secret("b", b"xy")}
    text = "got line-two-value and line-one-value\nline-two-value; xy stays (too short to mask)"
    assert secrets.redact(text, values) == "got *** and ***\n***; xy stays (too short to mask)"


def test_the_leak_scan_finds_values_across_chunk_boundaries_and_in_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_SCAN_CHUNK", 8)
    value = b"s3cret-value-0123"
    archive = tar(tmp_path / "r.tar", {"etc/clean": b"nothing here " * 20, "etc/leak": b"xxxxx" + value + b"yy",
                                        "etc/stripped": b"prefix s3cret-value-0123"},
                   {"etc/link": "/opt/s3cret-value-0123"})
    values = {"tok": _secret("tok", value + b"\n")}  # a file's trailing newline does not hide it
    assert secrets.find_in_tar(archive, values) == [("etc/leak", "tok"), ("etc/stripped", "tok"),
                                                    ("etc/link", "tok")]
    with pytest.raises(secrets.SecretLeakError) as err:
        secrets.require_absent(archive, values)
    assert "/etc/leak: secret tok" in err.value.details and value.decode() not in str(err.value)
    secrets.require_absent(tar(tmp_path / "clean.tar", {"etc/x": b"clean"}), values)
