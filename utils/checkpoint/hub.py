"""Sharing a checkpoint on the Hugging Face Hub (`--push-to-hub REPO`): the files that go, a check before training
that the upload can happen at all, and the upload, whose failures are one line naming the repository."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from utils.checkpoint.contract import EXPORT_ROWS_FILE
from utils.checkpoint.errors import UserError

# The training and validation rows' token ids stay home: they are data, not model (export reads them).
KEPT_HOME = (EXPORT_ROWS_FILE,)
# What an upload raises when the hub cannot be reached or refuses: OSError covers the hub's own HTTP errors, offline
# mode and a missing token; the bases of HfHubHTTPError add its HTTP library's (connection refused, timeouts).
UPLOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, *HfHubHTTPError.__bases__)


class HubError(UserError):
    """The checkpoint cannot go to the Hub: a bad repository name, no token, offline, or the upload failed."""


def shared_files(folder: str | Path) -> list[str]:
    """The checkpoint's files an upload sends, relative to its folder: everything but the data it keeps and the
    hidden files of a write in progress."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and path.name not in KEPT_HOME
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def check_push_target(repo: str) -> None:
    """Before training: the repository name is valid, a token is there and the hub is not set offline."""
    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise HubError(f"--push-to-hub {repo!r}: not a Hub repository name ({error})") from None
    if is_offline_mode():
        raise HubError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or leave "
                       "out --push-to-hub")
    if get_token() is None:
        raise HubError(f"--push-to-hub {repo}: no Hugging Face token; set HF_TOKEN or run `hf auth login` first")


def push_checkpoint(folder: str | Path, repo: str) -> str:
    """Create the repository if needed and upload the checkpoint's shared files; the commit's URL."""
    folder = Path(folder)
    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder, allow_patterns=shared_files(folder),
                                   commit_message="Checkpoint trained with bert-multilabel-classifier")
    except UPLOAD_ERRORS as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise HubError(f"--push-to-hub {repo}: the upload to {api.endpoint} failed ({reason}); the checkpoint "
                       f"stays in {folder}") from None
    return str(commit.commit_url)
