"""Pretrained weights from the Hugging Face Hub: `pretrained = "hf-hub:<repo>[@<revision>]"`.

The file comes through `huggingface_hub` (the `hub` extra) and lives in its cache (HF_HUB_CACHE /
HF_HOME), the one every Hub tool shares. A file already in that cache is used without touching
the network, so a cache filled once on a machine with internet works offline (and on pod hosts
without internet); a revision (commit, tag or branch) pins what is read. The repository's
`model.safetensors` is preferred; `pytorch_model.bin` goes through the same restricted reader as
any `.pth`. Either is then converted like a local weight file (timm's tensor names map for every
zoo model, `convert.SCHEMES`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

PREFIX = "hf-hub:"
FILES = ("model.safetensors", "pytorch_model.bin")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class HubWeights:
    repo: str
    revision: str | None

    @property
    def spec(self) -> str:
        return PREFIX + self.repo + (f"@{self.revision}" if self.revision else "")


def is_hub(pretrained: str) -> bool:
    return pretrained.startswith(PREFIX)


def parse(pretrained: str) -> HubWeights:
    """`hf-hub:<owner>/<name>[@<revision>]`, checked for form only (no network)."""
    body = pretrained[len(PREFIX) :]
    repo, _, revision = body.partition("@")
    if not _REPO.match(repo) or (_ and not revision):
        raise HubError(
            f"pretrained {pretrained!r}: expected 'hf-hub:<owner>/<name>[@<revision>]', "
            "e.g. 'hf-hub:timm/efficientnet_b4.ra2_in1k'"
        )
    return HubWeights(repo, revision or None)


def _library():
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError as e:
        raise HubError(
            "weights from the Hugging Face Hub need huggingface_hub: pip install 'mkln_jax[hub]'"
        ) from e
    return huggingface_hub, constants, errors


def _offline(constants) -> bool:
    # read now, not at huggingface_hub's import
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.upper() in ("1", "ON", "YES", "TRUE")


def resolve(pretrained: str) -> pathlib.Path:
    """The local path of the repository's weight file, from the cache when it is there, else
    downloaded into it. Fails in one line naming the repository and what to do."""
    weights = parse(pretrained)
    hub, constants, errors = _library()
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE  # read now, as above
    for filename in FILES:
        cached = hub.try_to_load_from_cache(
            weights.repo, filename, revision=weights.revision, cache_dir=cache
        )
        if isinstance(cached, str):
            return pathlib.Path(cached)
    if _offline(constants):
        raise HubError(
            f"{weights.spec}: not in the Hub cache ({cache}) and "
            f"HF_HUB_OFFLINE is set; fetch it once on a machine with internet: "
            f"hf download {weights.repo} model.safetensors"
            + (f" --revision {weights.revision}" if weights.revision else "")
        )
    problems = []
    for filename in FILES:
        try:
            return pathlib.Path(
                hub.hf_hub_download(
                    weights.repo, filename, revision=weights.revision, cache_dir=cache
                )
            )
        except errors.EntryNotFoundError:
            problems.append(f"no {filename}")
        except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, OSError) as e:
            raise HubError(
                f"{weights.spec}: could not download ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); fill the cache on a machine "
                f"with internet (hf download {weights.repo} model.safetensors) and set "
                "HF_HUB_CACHE to it"
            ) from e
    raise HubError(f"{weights.spec}: {', '.join(problems)} in the repository")


def commit_of(path: pathlib.Path) -> str:
    """The commit a cached file belongs to (its snapshot folder's name), or ''."""
    parts = pathlib.Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else ""
