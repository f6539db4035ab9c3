"""All settings of the sidecar, composed from each package's own classes.

Sources, highest priority first: keyword arguments, environment variables
(prefix ``NARRATIVE_``, nested fields joined by ``__``, e.g.
``NARRATIVE_SERVER__ENDPOINT=tcp://127.0.0.1:5556``), a TOML file (``--config``
or ``NARRATIVE_CONFIG``), then the defaults. Sections and where they are
defined:

=================  ====================================  ================
section            class                                 module
=================  ====================================  ================
dialogue_model     ModelSettings                         narrative.settings
batch_model        ModelSettings                         narrative.settings
sampling           SamplingSettings                      narrative.settings
embedding          EmbeddingSettings                     narrative.settings
context            ContextSettings                       narrative.settings
dialogue           DialogueSettings                      narrative.settings
lore               LoreSettings                          lore.settings
server             ServerSettings                        bridge.settings
=================  ====================================  ================
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bridge.settings import ServerSettings
from lore.settings import LoreSettings
from narrative.settings import (
    ContextSettings,
    DialogueSettings,
    EmbeddingSettings,
    ModelSettings,
    SamplingSettings,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


class Settings(BaseSettings):
    """All settings of the sidecar."""

    model_config = SettingsConfigDict(env_prefix="NARRATIVE_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(Path(".state"), description="Where the chromadb index and sessions live.")
    dialogue_model: ModelSettings = Field(default_factory=ModelSettings)
    batch_model: ModelSettings = Field(default_factory=ModelSettings, description="Model of build-time content generation (narrative batch, bridge generate): its own llama.cpp instance, so the dialogue model stays free. Production: a Qwen3.5 MoE GGUF (35B-A3B).")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    lore: LoreSettings = Field(default_factory=LoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    dialogue: DialogueSettings = Field(default_factory=DialogueSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("NARRATIVE_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


class SettingsError(ValueError):
    """Settings that cannot be used: the message names the file (or the environment) and each field."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``, without pydantic's links."""
    return "\n".join(f"  {'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}" for e in exc.errors())


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Load settings from `config` (TOML), the environment and `overrides`.

    Raises:
        FileNotFoundError: `config` is given and does not exist.
        SettingsError: `config` is not UTF-8 TOML, or a value is unknown, out of bounds or of the
            wrong type; the message names the file and the field (e.g. ``dialogue_model.n_ctx``).
    """
    source = "settings from the environment (NARRATIVE_*) and defaults"
    config = config if config is not None else (Path(os.environ["NARRATIVE_CONFIG"]) if os.environ.get("NARRATIVE_CONFIG") else None)
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"settings file not found: {config}")
        try:
            tomllib.loads(config.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{config}: not UTF-8 text: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config}: not valid TOML: {exc}") from None
        source = str(config)
    previous = os.environ.get("NARRATIVE_CONFIG")
    if config is not None:
        os.environ["NARRATIVE_CONFIG"] = str(config)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(f"{source}:\n{describe_validation_error(exc)}") from None
    finally:
        if previous is None:
            os.environ.pop("NARRATIVE_CONFIG", None)
        else:
            os.environ["NARRATIVE_CONFIG"] = previous


def settings_from_args(args) -> Settings:
    """Settings from ``--config``, the environment and the command's own flags (``--state-dir``, ``--endpoint``, ``--lore``)."""
    s = load_settings(getattr(args, "config", None))
    if getattr(args, "state_dir", None):
        s.state_dir = args.state_dir
    if getattr(args, "endpoint", None):
        s.server.endpoint = args.endpoint
    if getattr(args, "lore", None):
        s.lore.dir = args.lore
    return s
