"""The one size grammar (image.yaml, --size, layouts, cache gc --keep-bytes)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from assembler.errors import ConfigError
from assembler.sizes import parse_size


@pytest.mark.parametrize(("text", "value"), [
    ("4G", 4 << 30), ("512M", 512 << 20), ("1.5G", 3 << 29), ("100", 100), ("2GiB", 2 << 30), ("1MiB", 1 << 20),
    ("64 MiB", 64 << 20), ("3k", 3072), ("4096", 4096), (512, 512), ("8gb", 8 << 30), (" 1T ", 1 << 40),
])
def test_sizes_parse_to_bytes(text: int | str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["infG", "nanG", "-5G", "0", "1e3G", "", "G", "99999T", "big", "lots", 0, -1,
                                  True, "5 X"])
def test_what_is_not_a_positive_finite_size_is_refused(text: int | str) -> None:
    with pytest.raises(ConfigError, match="invalid size") as err:
        parse_size(text)
    assert "64MiB" in err.value.resolution


def test_in_a_model_it_is_a_validation_error_on_the_field() -> None:
    class Sized(BaseModel):
        size: int

        @field_validator("size", mode="before")
        @classmethod
        def _size(cls, value: int | str) -> int:
            return parse_size(value)

    assert Sized(size="2M").size == 2 << 20
    with pytest.raises(ValidationError, match="size"):
        Sized(size="lots")
